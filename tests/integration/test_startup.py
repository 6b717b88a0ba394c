"""Start-up: refusals, and configuration from files and environment (SPEC §1, §2)."""

import os
import subprocess
import time
import uuid

import pytest

import harness
from harness import LOOPBACK, clean_env, free_port, kill_group, new_token, request, spawn


def run_refused(argv, env, workdir, timeout=10.0):
    """Runs switchboard expecting it to refuse to start: returns (code, stdout, stderr).
    A process still running after |timeout| did not refuse: it is killed and reported."""
    if not os.access(harness.sb_binary(), os.X_OK):
        pytest.fail("%s is missing (run `make`)" % harness.sb_binary())
    out = os.path.join(workdir, "refused-%s.out" % uuid.uuid4().hex[:6])
    err = out[:-4] + ".err"
    with open(out, "wb") as fo, open(err, "wb") as fe:
        p = spawn(argv, "switchboard (expected to refuse)", stdout=fo, stderr=fe, env=env)
        try:
            code = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(p)
            pytest.fail("switchboard did not refuse to start within %.0fs: %s\nstdout:\n%s\n"
                        "stderr:\n%s" % (timeout, argv, harness.tail(out), harness.tail(err)))
        finally:
            kill_group(p)
    with open(out, "rb") as f:
        so = f.read().decode("utf-8", "replace")
    with open(err, "rb") as f:
        se = f.read().decode("utf-8", "replace")
    return code, so, se


def base_argv(redis, port=None, token=True):
    a = [harness.sb_binary(), "--listen", "%s:%d" % (LOOPBACK, port or free_port()),
         "--redis", redis.url, "--threads", "1"]
    if token:
        a += ["--admin-token", new_token()]
    return a


def stderr_lines(se):
    return [ln for ln in se.splitlines() if ln.strip()]


def test_no_admin_token_refuses_with_one_line(redis, workdir):
    code, so, se = run_refused(base_argv(redis, token=False), clean_env(), workdir)
    assert code != 0
    lines = stderr_lines(se)
    assert len(lines) == 1, "want one clear line on stderr, got: %r" % se
    assert "token" in lines[0].lower(), "the line should say a token is missing: %r" % lines[0]


@pytest.mark.parametrize("bad", [
    ["--no-such-flag"],
    ["--threads", "lots"],
    ["--listen", "not-a-host-port"],
    ["--max-body-bytes", "-5"],
    ["--log-format", "xml"],
    ["--allow-upstream", "300.1.2.3/99"],
])
def test_bad_flag_refuses(redis, workdir, bad):
    code, so, se = run_refused(base_argv(redis) + bad, clean_env(), workdir)
    assert code != 0
    lines = stderr_lines(se)
    assert len(lines) >= 1, "a refusal must say why on stderr"
    assert len(lines) == 1, "want one clear line on stderr, got: %r" % se


def test_unreadable_admin_token_file_refuses(redis, workdir):
    argv = base_argv(redis, token=False) + ["--admin-token-file",
                                            os.path.join(workdir, "does-not-exist")]
    code, so, se = run_refused(argv, clean_env(), workdir)
    assert code != 0
    assert len(stderr_lines(se)) == 1, se


def _start(argv, env, workdir, port, name):
    """Starts a switchboard from an explicit argv/env; returns a harness.Switchboard view."""
    sb = harness.Switchboard(os.path.join(workdir, name), "unused", name=name)
    sb.out = open(sb.out_path, "ab")
    sb.err = open(sb.err_path, "ab")
    sb.proc = spawn(argv, "switchboard %s" % name, stdout=sb.out, stderr=sb.err, env=env)
    sb.port = port
    sb.started_at = time.time()
    harness.SWITCHBOARDS.append(sb)
    return sb


@pytest.fixture
def started(request):
    insts = []
    yield insts
    errors = []
    for sb in insts:
        try:
            sb.stop()
        except AssertionError as e:
            errors.append(str(e))
    if errors:
        raise AssertionError("\n".join(errors))


def _mint_status(sb, token):
    return request(sb, "POST", "/admin/workspaces/%s/tokens" % harness.unique_ws(),
                   body={}, token=token).status


def test_admin_token_file(redis, workdir, started):
    token = new_token()
    path = os.path.join(workdir, "admin-token")
    with open(path, "w") as f:
        f.write(token + "\n")  # files end in a newline; it is not part of the token
    port = free_port()
    argv = base_argv(redis, port, token=False) + ["--admin-token-file", path]
    sb = _start(argv, clean_env(), workdir, port, "sb-tokenfile")
    started.append(sb)
    sb.wait_ready()
    assert _mint_status(sb, token) == 201
    assert _mint_status(sb, token + "x") == 401


def test_admin_token_from_env(redis, workdir, started):
    token = new_token()
    port = free_port()
    argv = base_argv(redis, port, token=False)
    sb = _start(argv, clean_env({"SWITCHBOARD_ADMIN_TOKEN": token}), workdir, port, "sb-envtok")
    started.append(sb)
    sb.wait_ready()
    assert _mint_status(sb, token) == 201
    assert _mint_status(sb, "wrong") == 401


def test_listen_from_env(redis, workdir, started):
    port = free_port()
    token = new_token()
    argv = [harness.sb_binary(), "--redis", redis.url, "--admin-token", token,
            "--threads", "1"]
    sb = _start(argv, clean_env({"SWITCHBOARD_LISTEN": "%s:%d" % (LOOPBACK, port)}),
                workdir, port, "sb-envlisten")
    started.append(sb)
    sb.wait_ready()
    assert request(sb, "GET", "/healthz").status == 200


def test_flag_wins_over_env(redis, workdir, started):
    flag_port, env_port = free_port(), free_port()
    argv = base_argv(redis, flag_port)
    sb = _start(argv, clean_env({"SWITCHBOARD_LISTEN": "%s:%d" % (LOOPBACK, env_port)}),
                workdir, flag_port, "sb-flagwins")
    started.append(sb)
    sb.wait_ready()
    assert request(sb, "GET", "/healthz").status == 200
    with pytest.raises(OSError):
        request((LOOPBACK, env_port), "GET", "/healthz", timeout=1.0)
