"""Packaging and deployment artifacts, checked as far as this machine can run them.

  make install      the installed tree (PREFIX, DESTDIR), the env file kept on reinstall
  systemd unit      `systemd-analyze verify` on the installed tree (clean output), and
                    `systemd-analyze security --offline` under an exposure threshold
  man pages         rendered by `man -l`, no groff warnings, every flag and command listed
  tools/run-local   (`make run`) its own AOF/noeviction Redis, the token kept across
                    restarts, a foreign Redis refused, REDIS_URL named and used
  Dockerfile        two bookworm-slim stages, non-root, runtime packages = what ldd needs,
                    its HEALTHCHECK command run against a live switchboard
  compose           `docker-compose config` (Debian's docker-compose; no engine runs here),
                    the HAProxy config with `haproxy -c` and then for real in front of two
                    switchboards, Prometheus config with promtool, Grafana provisioning
  kubernetes        a schema check with the Kubernetes API models of Debian's
                    python3-kubernetes (required fields, no unknown fields) plus the
                    cross-references a cluster would only reveal at run time; the
                    ServiceMonitor CRD by hand; `kubectl kustomize` when kubectl exists

Tools the tests need (`make test-deps` installs them) are skipped when absent on a
developer's machine and fail under CI (CI=true).
"""

import glob
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import time

import pytest
import yaml

import harness
import promtext
from harness import (REPO, RedisServer, RespClient, clean_env, free_port, request,
                     sb_bin_dir, spawn, unique_ws)

DEPLOY = os.path.join(REPO, "deploy")
UNIT = os.path.join(DEPLOY, "systemd", "switchboard.service")
COMPOSE = os.path.join(DEPLOY, "compose.yaml")
HAPROXY_CFG = os.path.join(DEPLOY, "haproxy", "haproxy.cfg")
K8S = os.path.join(DEPLOY, "kubernetes")
RUN_LOCAL = os.path.join(REPO, "tools", "run-local.sh")


def need_tool(name, hint):
    path = promtext.tool(name)
    if path is None:
        msg = "%s not found (%s)" % (name, hint)
        if os.environ.get("CI"):
            pytest.fail(msg + " — CI must have it")
        pytest.skip(msg)
    return path


def run(argv, timeout=60, **kw):
    """Runs |argv| to completion. A `make` started here must not inherit the variables of
    the make that runs this suite (`make asan` passes BINDIR=bin-asan, BUILD, OPT and
    LDFLAGS, which make exports to its recipes' environment and MAKEFLAGS), so those are
    dropped unless |env| is given."""
    if "env" not in kw:
        drop = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "BINDIR", "BUILD", "OPT",
                "LDFLAGS", "CFLAGS")
        kw["env"] = {k: v for k, v in os.environ.items() if k not in drop}
    return subprocess.run(argv, capture_output=True, timeout=timeout, **kw)


def help_flags():
    """Every --flag of `switchboard --help`."""
    out = run([os.path.join(sb_bin_dir(), "switchboard"), "--help"]).stdout.decode()
    flags = set(re.findall(r"^\s+(--[a-z][a-z0-9-]+)", out, re.M))
    assert {"--listen", "--redis", "--admin-token-file"} <= flags, out
    return flags - {"--help"}


def env_names():
    return {"SWITCHBOARD_" + f[2:].upper().replace("-", "_") for f in help_flags()}


# ---- make install ----------------------------------------------------------------------

def make_install(destdir, prefix="/usr/local"):
    # -o all: install what is built (SB_BIN), never rebuild here.
    p = run(["make", "--no-print-directory", "-s", "-C", REPO, "-o", "all", "install",
             "DESTDIR=" + destdir, "PREFIX=" + prefix, "BINDIR=" + sb_bin_dir()], timeout=120)
    assert p.returncode == 0, p.stdout.decode() + p.stderr.decode()
    return destdir


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    return make_install(str(tmp_path_factory.mktemp("destdir")))


def test_make_install_lays_out_the_tree(installed, tmp_path):
    want = {
        "usr/local/bin/switchboard": 0o755, "usr/local/bin/sbctl": 0o755,
        "usr/local/share/man/man8/switchboard.8": 0o644,
        "usr/local/share/man/man1/sbctl.1": 0o644,
        "usr/local/lib/systemd/system/switchboard.service": 0o644,
        "etc/switchboard/switchboard.env": 0o644,
        "usr/local/share/doc/switchboard/LICENSE": 0o644,
        "usr/local/share/doc/switchboard/CHANGELOG.md": 0o644,
    }
    for rel, mode in want.items():
        st = os.stat(os.path.join(installed, rel))
        assert stat.S_IMODE(st.st_mode) == mode, (rel, oct(st.st_mode))
    out = run([os.path.join(installed, "usr/local/bin/switchboard"), "--help"])
    assert out.returncode == 0 and b"--admin-token-file" in out.stdout
    unit = open(os.path.join(installed, "usr/local/lib/systemd/system/switchboard.service")).read()
    assert "ExecStart=/usr/local/bin/switchboard " in unit

    # another PREFIX moves ExecStart with it; an operator's env file survives a reinstall
    other = make_install(str(tmp_path / "pkg"), prefix="/usr")
    unit = open(os.path.join(other, "usr/lib/systemd/system/switchboard.service")).read()
    assert "ExecStart=/usr/bin/switchboard --admin-token-file %d/admin-token" in unit, unit
    envf = os.path.join(other, "etc/switchboard/switchboard.env")
    with open(envf, "a") as f:
        f.write("SWITCHBOARD_THREADS=7\n")
    make_install(other, prefix="/usr")
    assert "SWITCHBOARD_THREADS=7" in open(envf).read(), "reinstall replaced the env file"


# ---- systemd ---------------------------------------------------------------------------

def verify_root(installed, tmp_path):
    """A copy of the installed tree with the host's unit directory beside it, so that
    `systemd-analyze verify --root` finds sysinit.target and friends."""
    root = str(tmp_path / "root")
    shutil.copytree(installed, root, symlinks=True)
    for d in ("/lib/systemd/system", "/usr/lib/systemd/system"):
        if os.path.isdir(d) and not os.path.islink(d):
            os.makedirs(os.path.join(root, d.lstrip("/")), exist_ok=True)
            subprocess.run(["cp", "-a", d + "/.", os.path.join(root, d.lstrip("/"))], check=True)
            break
    return root


def analyze(root, *args):
    tool = need_tool("systemd-analyze", "Debian package systemd")
    env = dict(os.environ, MANPATH=os.path.join(root, "usr/local/share/man"))
    return run([tool] + list(args) + ["--root=" + root,
                                      os.path.join(root, "usr/local/lib/systemd/system/switchboard.service")],
               env=env)


def test_systemd_unit_verifies_clean_on_the_installed_tree(installed, tmp_path):
    root = verify_root(installed, tmp_path)
    p = analyze(root, "verify")
    out = (p.stdout + p.stderr).decode()
    assert p.returncode == 0 and out.strip() == "", out
    # The same check fails when the unit's program is missing (so it checks something).
    os.remove(os.path.join(root, "usr/local/bin/switchboard"))
    p = analyze(root, "verify")
    assert p.returncode != 0 and b"is not executable" in p.stdout + p.stderr, p


def test_systemd_unit_hardening(installed, tmp_path):
    root = verify_root(installed, tmp_path)
    p = analyze(root, "security", "--offline=true", "--threshold=20")
    out = p.stdout.decode()
    m = re.search(r"Overall exposure level for switchboard.service: ([0-9.]+)", out)
    assert p.returncode == 0 and m, out[-2000:]
    unit = open(UNIT).read()
    for line in ("EnvironmentFile=/etc/switchboard/switchboard.env",
                 "LoadCredential=admin-token:/etc/switchboard/admin-token",
                 "--admin-token-file %d/admin-token", "DynamicUser=yes", "User=switchboard",
                 "Restart=on-failure", "LimitNOFILE=", "ProtectSystem=strict",
                 "NoNewPrivileges=yes", "PrivateTmp=yes", "CapabilityBoundingSet=",
                 "SystemCallFilter=@system-service"):
        assert line in unit, line


def test_env_file_names_only_real_flags():
    names = set(re.findall(r"^#?(SWITCHBOARD_[A-Z_]+)=", open(
        os.path.join(DEPLOY, "systemd", "switchboard.env")).read(), re.M))
    assert {"SWITCHBOARD_LISTEN", "SWITCHBOARD_REDIS"} <= names
    assert not names - env_names(), "not flags: %s" % sorted(names - env_names())


def test_systemd_credential_reaches_switchboard(workdir, redis, tmp_path):
    """What the unit's ExecStart does, minus systemd: the token read from a file in a
    credentials directory, the rest from the env file's variables."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "admin-token").write_text("adm-from-credential\n")
    os.chmod(creds / "admin-token", 0o400)
    port = free_port()
    env = clean_env({"SWITCHBOARD_LISTEN": "127.0.0.1:%d" % port,
                     "SWITCHBOARD_REDIS": redis.url, "SWITCHBOARD_THREADS": "1"})
    unit = open(UNIT).read()
    argv = re.search(r"^ExecStart=(.*)$", unit, re.M).group(1).split()
    argv[0] = os.path.join(sb_bin_dir(), "switchboard")
    argv = [a.replace("%d", str(creds)) for a in argv]
    log = open(os.path.join(workdir, "unit-argv.log"), "wb")
    p = spawn(argv, "switchboard (unit argv)", stdout=log, stderr=log, env=env)
    try:
        ok = False
        for _ in range(100):
            try:
                if request(("127.0.0.1", port), "GET", "/readyz", timeout=1).status == 200:
                    ok = True
                    break
            except OSError:
                pass
            time.sleep(0.1)
        assert ok, harness.tail(log.name)
        r = request(("127.0.0.1", port), "POST", "/admin/workspaces/%s/tokens" % unique_ws(),
                    body={}, token="adm-from-credential")
        assert r.status == 201, r
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(15) == 0
        harness.kill_group(p)
        log.close()


# ---- man pages -------------------------------------------------------------------------

def render(page):
    need_tool("man", "Debian package man-db")
    p = run(["man", "-l", page], env=dict(os.environ, MANWIDTH="100", MAN_KEEP_FORMATTING="0"))
    assert p.returncode == 0, p.stderr
    text = re.sub(r".\x08", "", p.stdout.decode())
    warn = run(["groff", "-man", "-ww", "-z", page])
    assert warn.returncode == 0 and not warn.stderr.strip(), warn.stderr.decode()
    return text


def test_man_pages_render_and_list_every_flag_and_command(installed):
    sw = render(os.path.join(installed, "usr/local/share/man/man8/switchboard.8"))
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "SIGNALS", "FILES", "SEE ALSO"):
        assert re.search(r"^%s$" % section, sw, re.M), section
    missing = sorted(f for f in help_flags() if f not in sw)
    assert not missing, "switchboard(8) lacks %s" % missing

    sb = render(os.path.join(installed, "usr/local/share/man/man1/sbctl.1"))
    out = run([os.path.join(sb_bin_dir(), "sbctl"), "--help"])
    usage = out.stdout.decode() + out.stderr.decode()
    commands = set(re.findall(r"^  ([a-z]+(?: (?:mint|revoke))?)\b", usage, re.M))
    assert {"status", "why", "health", "token mint"} <= commands, usage
    options = set(re.findall(r"^  (--[a-z-]+)", usage, re.M))
    missing = sorted(x for x in commands | options if x not in sb)
    assert not missing, "sbctl(1) lacks %s" % missing
    assert "EXIT STATUS" in sb


# ---- make run (tools/run-local.sh) -----------------------------------------------------

class RunLocal:
    def __init__(self, workdir, run_dir, redis_port, listen_port, redis_url=""):
        self.out_path = os.path.join(workdir, "run-local-%s.out" % unique_ws("r"))
        self.out = open(self.out_path, "wb")
        env = clean_env({"SB_RUN_DIR": run_dir, "RUN_REDIS_PORT": str(redis_port),
                         "SB_BIN": sb_bin_dir()})
        self.port = listen_port
        self.proc = spawn(["bash", RUN_LOCAL, redis_url, "127.0.0.1:%d" % listen_port],
                          "run-local.sh", stdout=self.out, stderr=subprocess.STDOUT, env=env,
                          cwd=REPO)

    def text(self):
        return open(self.out_path, encoding="utf-8", errors="replace").read()

    def wait_ready(self, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, self.text()
            try:
                if request(("127.0.0.1", self.port), "GET", "/readyz", timeout=1).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError("make run not ready:\n" + self.text())

    def token(self):
        return re.search(r"export SWITCHBOARD_ADMIN_TOKEN=(\S+)", self.text()).group(1)

    def stop(self):
        self.proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            code = self.proc.wait(20)
        finally:
            harness.kill_group(self.proc)
            self.out.close()
        return code


def redis_alive(port):
    try:
        with RespClient(port, timeout=1) as c:
            return c.call("PING") == b"PONG"
    except OSError:
        return False


def test_make_run_keeps_its_token_and_its_own_redis(workdir, tmp_path):
    run_dir, rport, lport = str(tmp_path / "run"), free_port(), free_port()
    r = RunLocal(workdir, run_dir, rport, lport)
    try:
        r.wait_ready()
        first = r.token()
        tok_file = os.path.join(run_dir, "admin-token")
        assert open(tok_file).read().strip() == first
        assert stat.S_IMODE(os.stat(tok_file).st_mode) == 0o600
        assert "redis://127.0.0.1:%d" % rport in r.text() and "started" in r.text(), r.text()
        with RespClient(rport) as c:
            assert c.call("CONFIG", "GET", "appendonly")[1] == b"yes"
            assert c.call("CONFIG", "GET", "maxmemory-policy")[1] == b"noeviction"
        ws = unique_ws("mr")
        assert request(("127.0.0.1", lport), "POST", "/registry/register", token=first,
                       body={"workspace_id": ws, "delivery_mode": "poll"}).status == 200
    finally:
        code = r.stop()
    assert code == 0, r.text()
    assert not redis_alive(rport), "make run left its redis-server running"

    r = RunLocal(workdir, run_dir, rport, lport)
    try:
        r.wait_ready()
        assert r.token() == first, "the admin token changed across a restart"
        assert "reused" in r.text()
        # the AOF brought the registration back
        g = request(("127.0.0.1", lport), "GET", "/registry/%s" % ws, token=first)
        assert g.status == 200 and g.json()["delivery_mode"] == "poll", g
    finally:
        assert r.stop() == 0, r.text()


def test_make_run_never_adopts_a_foreign_redis(workdir, tmp_path):
    foreign = RedisServer(str(tmp_path / "foreign"))
    foreign.start()
    try:
        r = RunLocal(workdir, str(tmp_path / "run"), foreign.port, free_port())
        code = r.proc.wait(15)
        r.out.close()
        assert code != 0 and "Refusing to adopt" in r.text(), r.text()

        # named on purpose, it is used, and its unsafe settings are called out
        lport = free_port()
        r = RunLocal(workdir, str(tmp_path / "run"), free_port(), lport, redis_url=foreign.url)
        try:
            r.wait_ready()
            t = r.text()
            assert "Redis: %s (given by REDIS_URL" % foreign.url in t, t
            assert "appendonly=no" in t and "warning: queued messages can be lost" in t, t
        finally:
            assert r.stop() == 0
        assert redis_alive(foreign.port), "make run stopped a Redis it did not start"
    finally:
        foreign.stop()


# ---- Dockerfile ------------------------------------------------------------------------

def dockerfile_stages():
    text = open(os.path.join(REPO, "Dockerfile")).read().replace("\\\n", " ")
    stages, cur = [], None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            cur = {"from": rest, "lines": []}
            stages.append(cur)
        elif cur is not None:
            cur["lines"].append((word.upper(), rest.strip()))
    return stages


def test_dockerfile_stages_user_and_runtime_libraries():
    stages = dockerfile_stages()
    assert len(stages) == 2, stages
    assert stages[0]["from"] == "debian:bookworm-slim AS build"
    assert stages[1]["from"] == "debian:bookworm-slim"
    rt = stages[1]["lines"]
    users = [v for k, v in rt if k == "USER"]
    assert users and not users[-1].startswith(("0", "root")), users
    assert any(k == "COPY" and v.startswith("--from=build") for k, v in rt)
    installs = " ".join(v for k, v in rt if k == "RUN" and "apt-get install" in v)
    rt_pkgs = set(re.findall(r"\b(lib[a-z0-9.+-]+)\b", installs))
    assert not any(p.endswith("-dev") for p in rt_pkgs), rt_pkgs

    # every shared library the binaries link directly (ELF NEEDED) comes from a package
    # the runtime installs by name; what those libraries load in turn is apt's to bring
    # (their Depends), so it is not listed — only the direct ones must be.
    need = set()
    for b in ("switchboard", "sbctl"):
        path = os.path.join(sb_bin_dir(), b)
        direct = set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]",
                                run(["readelf", "-d", path]).stdout.decode()))
        assert direct, "readelf found no NEEDED entries in %s" % path
        out = run(["ldd", path]).stdout.decode()
        resolved = dict(re.findall(r"^\s*(\S+) => (/\S+)", out, re.M))
        for soname in sorted(direct):
            lib = resolved.get(soname)
            assert lib, "ldd cannot resolve %s of %s" % (soname, b)
            if "libasan" in lib or "libubsan" in lib:
                continue
            owner = None
            for cand in (lib, os.path.realpath(lib), lib.replace("/usr/lib/", "/lib/", 1)):
                q = run(["dpkg", "-S", cand])
                if q.returncode == 0:
                    owner = q.stdout.decode().split(":")[0]
                    break
            assert owner, "no Debian package owns %s" % lib
            need.add(owner)
    need -= {"libc6", "libgcc-s1", "libstdc++6"}
    assert need, "ldd found no libraries?"
    assert need <= rt_pkgs, "runtime stage lacks %s" % sorted(need - rt_pkgs)


def test_dockerfile_build_stage_has_what_make_install_needs(tmp_path):
    """The build stage's COPY set, laid out as in the image, is enough for `make all`
    (every source present: `make -n`) and for `make install PREFIX=/usr` (the man pages,
    unit, env file and docs it installs); the runtime stage then finds both programs on
    PATH for its ENTRYPOINT and HEALTHCHECK."""
    build = dockerfile_stages()[0]["lines"]
    ctx = tmp_path / "src"
    ctx.mkdir()
    for k, v in build:
        if k != "COPY" or v.startswith("--"):
            continue
        *srcs, dst = v.split()
        for src in srcs:
            target = ctx / src if dst in ("./", ".") else ctx / dst
            if os.path.isdir(os.path.join(REPO, src)):
                shutil.copytree(os.path.join(REPO, src), target, ignore=shutil.ignore_patterns("*.orig"))
            else:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copy2(os.path.join(REPO, src), target)
    p = run(["make", "-n", "-C", str(ctx), "all"])
    assert p.returncode == 0, p.stderr.decode()
    assert b"src/main.c" in p.stdout and b"src/sbctl.c" in p.stdout
    # the binaries as the stage would have built them
    os.makedirs(ctx / "bin")
    for b in ("switchboard", "sbctl"):
        shutil.copy2(os.path.join(sb_bin_dir(), b), ctx / "bin" / b)
    out = tmp_path / "out"
    p = run(["make", "-C", str(ctx), "-o", "all", "install", "PREFIX=/usr", "DESTDIR=%s" % out])
    assert p.returncode == 0, p.stdout.decode() + p.stderr.decode()
    for rel in ("usr/bin/switchboard", "usr/bin/sbctl", "usr/share/man/man8/switchboard.8",
                "usr/share/man/man1/sbctl.1"):
        assert (out / rel).exists(), rel
    rt = dockerfile_stages()[1]["lines"]
    assert [v for k, v in rt if k == "ENTRYPOINT"] == ['["switchboard"]']


def test_dockerfile_healthcheck_follows_readyz(workdir, tmp_path, make_sb):
    rt = dockerfile_stages()[1]["lines"]
    hc = [v for k, v in rt if k == "HEALTHCHECK"]
    assert len(hc) == 1
    argv = json.loads(hc[0][hc[0].index("CMD") + 3:].strip())
    env_line = " ".join(v for k, v in rt if k == "ENV")
    url = re.search(r"SWITCHBOARD_URL=(\S+)", env_line).group(1)
    listen = re.search(r"SWITCHBOARD_LISTEN=(\S+)", env_line).group(1)
    assert url.rsplit(":", 1)[1] == listen.rsplit(":", 1)[1], (url, listen)
    assert argv[0] == "sbctl"
    argv[0] = os.path.join(sb_bin_dir(), "sbctl")

    r = RedisServer(str(tmp_path / "redis-hc"))
    r.start()
    try:
        sb = make_sb(redis_url=r.url, name="sb-hc")
        env = clean_env({"SWITCHBOARD_URL": "http://127.0.0.1:%d" % sb.port})
        assert run(argv, env=env, timeout=15).returncode == 0
        r.stop()
        deadline = time.time() + 8
        code = 0
        while time.time() < deadline and code == 0:
            code = run(argv, env=env, timeout=15).returncode
            time.sleep(0.2)
        assert code != 0, "the health check stayed healthy with Redis gone"
        r.start()
    finally:
        r.stop()


# ---- compose ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose():
    tool = need_tool("docker-compose", "Debian package docker-compose")
    p = run([tool, "-f", COMPOSE, "config"], cwd=REPO)
    assert p.returncode == 0, p.stderr.decode()
    return yaml.safe_load(p.stdout)


def mounts(svc):
    out = {}
    for v in svc.get("volumes", []):
        if isinstance(v, str):
            src, dst = v.split(":")[:2]
        else:
            src, dst = v["source"], v["target"]
        out[dst] = src
    return out


def test_compose_stack(compose):
    s = compose["services"]
    assert {"redis", "switchboard-1", "switchboard-2", "haproxy", "prometheus", "grafana",
            "agent"} <= set(s)
    cmd = " ".join(s["redis"]["command"])
    assert "--appendonly yes" in cmd and "--maxmemory-policy noeviction" in cmd, cmd
    for name in ("switchboard-1", "switchboard-2"):
        sb = s[name]
        assert sb["build"]["context"] == REPO and sb["build"]["dockerfile"] == "Dockerfile"
        env = sb["environment"]
        assert env["SWITCHBOARD_REDIS"] == "redis://redis:6379"
        assert env["SWITCHBOARD_LISTEN"].endswith(":8080")
        assert set(k for k in env if k.startswith("SWITCHBOARD_")) <= env_names()
        assert "/run/secrets" in mounts(sb)
    # every file compose mounts exists
    for name, svc in s.items():
        for dst, src in mounts(svc).items():
            if src.startswith("/"):
                assert os.path.exists(src), (name, src)
    def published(p):  # "127.0.0.1:8080:8080/tcp" or the long form
        if isinstance(p, dict):
            return p.get("host_ip"), str(p.get("published"))
        parts = str(p).split("/")[0].split(":")
        return (parts[0] if len(parts) == 3 else None), parts[-2]
    assert ("127.0.0.1", "8080") in [published(p) for p in s["haproxy"]["ports"]]
    for name, svc in s.items():
        for p in svc.get("ports", []):
            assert published(p)[0] == "127.0.0.1", (name, p)  # loopback only
    agent = s["agent"]["environment"]
    assert agent["SWITCHBOARD_URL"] == "http://haproxy:8080" and agent["WORKSPACE_ID"]


def test_haproxy_config_checks(compose):
    tool = need_tool("haproxy", "`make test-deps` copies it out of Debian's haproxy package")
    p = run([tool, "-c", "-f", HAPROXY_CFG])
    out = (p.stdout + p.stderr).decode()
    assert p.returncode == 0, out
    warnings = [l for l in out.splitlines() if "[WARNING]" in l]
    # only the compose service names, unknown outside compose, may warn
    assert all("could not resolve address 'switchboard-" in w for w in warnings), warnings
    servers = re.findall(r"^\s*server (\S+) (\S+):8080", open(HAPROXY_CFG).read(), re.M)
    assert {h for _, h in servers} == {"switchboard-1", "switchboard-2"} <= set(compose["services"])


def test_haproxy_takes_an_unready_instance_out(workdir, tmp_path, make_sb):
    """The HAProxy config for real, compose names replaced by two live switchboards on
    separate Redis servers; one loses its Redis and must leave the rotation."""
    tool = need_tool("haproxy", "`make test-deps` copies it out of Debian's haproxy package")
    r1 = RedisServer(str(tmp_path / "r1"))
    r2 = RedisServer(str(tmp_path / "r2"))
    r1.start()
    r2.start()
    hp = None
    try:
        token = harness.new_token()
        sb1 = make_sb(redis_url=r1.url, name="sb-hp1", admin_token=token)
        sb2 = make_sb(redis_url=r2.url, name="sb-hp2", admin_token=token)
        front, stats = free_port(), free_port()
        cfg = open(HAPROXY_CFG).read()
        cfg = cfg.replace("switchboard-1:8080", "127.0.0.1:%d" % sb1.port)
        cfg = cfg.replace("switchboard-2:8080", "127.0.0.1:%d" % sb2.port)
        cfg = cfg.replace("bind :8080", "bind 127.0.0.1:%d" % front)
        cfg = cfg.replace("bind :8404", "bind 127.0.0.1:%d" % stats)
        path = tmp_path / "haproxy.cfg"
        path.write_text(cfg)
        log = open(str(tmp_path / "haproxy.log"), "wb")
        hp = spawn([tool, "-db", "-f", str(path)], "haproxy", stdout=log, stderr=log)

        def readyz_statuses(n=8):
            out = []
            for _ in range(n):
                try:
                    out.append(request(("127.0.0.1", front), "GET", "/readyz", timeout=2).status)
                except OSError:
                    out.append(None)
            return out

        deadline = time.time() + 10
        while time.time() < deadline and set(readyz_statuses(4)) != {200}:
            time.sleep(0.2)
        assert set(readyz_statuses()) == {200}
        r1.stop()  # sb1 answers /readyz 503 from now on
        deadline = time.time() + 12
        seen = []
        while time.time() < deadline:
            seen = readyz_statuses()
            if set(seen) == {200}:
                break
            time.sleep(0.3)
        assert set(seen) == {200}, "sb1 not taken out of rotation: %s" % seen
        # writes through HAProxy all land on the ready instance (sb1 could not take them)
        for _ in range(6):
            ws = unique_ws("hp")
            r = request(("127.0.0.1", front), "POST", "/registry/register", token=token,
                        body={"workspace_id": ws, "delivery_mode": "poll"})
            assert r.status == 200, r
            assert request(sb2, "GET", "/registry/%s" % ws, token=token).status == 200
    finally:
        if hp is not None:
            harness.kill_group(hp)
        r1.stop()
        r2.stop()


def test_compose_prometheus_config_and_rules(compose, tmp_path):
    s = compose["services"]["prometheus"]
    m = mounts(s)
    # lay the files out as the container sees them, then let promtool check them
    etc = tmp_path / "etc"
    etc.mkdir()
    for dst, src in m.items():
        if dst.startswith("/etc/prometheus/"):
            shutil.copy(src, etc / os.path.basename(dst))
    assert (etc / "prometheus.yml").exists() and (etc / "alerts.yml").exists(), m
    tool = need_tool("promtool", "`make test-deps` copies it out of Debian's prometheus package")
    p = run([tool, "check", "config", str(etc / "prometheus.yml")])
    out = (p.stdout + p.stderr).decode()
    assert p.returncode == 0 and "SUCCESS" in out and "1 rule files found" in out, out
    cfg = yaml.safe_load(open(etc / "prometheus.yml"))
    job = cfg["scrape_configs"][0]
    assert job["job_name"] == "switchboard"  # alerts.yml's SwitchboardDown matches on it
    targets = job["static_configs"][0]["targets"]
    assert sorted(targets) == ["switchboard-1:8080", "switchboard-2:8080"], targets


def test_compose_grafana_provisioning(compose):
    g = compose["services"]["grafana"]
    m = mounts(g)
    prov = m["/etc/grafana/provisioning"]
    ds_files = glob.glob(os.path.join(prov, "datasources", "*.yml"))
    db_files = glob.glob(os.path.join(prov, "dashboards", "*.yml"))
    assert ds_files and db_files
    ds = [d for f in ds_files for d in yaml.safe_load(open(f))["datasources"]]
    assert [d["type"] for d in ds] == ["prometheus"] and ds[0]["isDefault"]
    assert ds[0]["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]
    providers = [p for f in db_files for p in yaml.safe_load(open(f))["providers"]]
    path = providers[0]["options"]["path"]
    dash = [src for dst, src in m.items() if os.path.dirname(dst) == path]
    assert dash, "no dashboard mounted into %s: %s" % (path, m)
    d = json.load(open(dash[0]))
    dsvar = [v for v in d["templating"]["list"] if v["type"] == "datasource"]
    assert dsvar and dsvar[0]["query"] == "prometheus", dsvar


# ---- kubernetes ------------------------------------------------------------------------

def k8s_docs():
    docs = []
    for f in sorted(glob.glob(os.path.join(K8S, "*.yaml"))):
        if os.path.basename(f) == "kustomization.yaml":
            continue
        for d in yaml.safe_load_all(open(f)):
            if d:
                docs.append((os.path.basename(f), d))
    return docs


def test_kubernetes_manifests_against_the_api_models():
    """Schema check with python3-kubernetes' generated models (Kubernetes OpenAPI): every
    required field present, and nothing the models do not know (a misspelt field would
    be silently dropped by a real API server's client-side defaults, or rejected)."""
    try:
        import kubernetes.client as k
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("python3-kubernetes missing — CI must have it")
        pytest.skip("python3-kubernetes not installed (`make test-deps`)")
    api = k.ApiClient()
    models = {("v1", "ConfigMap"): "V1ConfigMap", ("v1", "Secret"): "V1Secret",
              ("v1", "Service"): "V1Service", ("apps/v1", "Deployment"): "V1Deployment",
              ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget"}
    kinds = set()
    for name, d in k8s_docs():
        key = (d["apiVersion"], d["kind"])
        kinds.add(d["kind"])
        if key == ("monitoring.coreos.com/v1", "ServiceMonitor"):
            continue  # a CRD: checked by hand below
        assert key in models, "%s: unexpected %s" % (name, key)
        obj = api._ApiClient__deserialize(d, models[key])  # raises on a missing required field
        back = api.sanitize_for_serialization(obj)
        if d["kind"] == "Secret":  # the model has stringData; the round trip keeps it
            back.setdefault("stringData", {})
        assert back == d, "%s: fields the Kubernetes API does not have: %s" % (
            name, json.dumps(d, sort_keys=True) + "\n!=\n" + json.dumps(back, sort_keys=True))
    assert kinds == {"ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget",
                     "ServiceMonitor"}, kinds


def test_kubernetes_manifests_fit_together():
    by_kind = {}
    for _, d in k8s_docs():
        by_kind.setdefault(d["kind"], []).append(d)
    dep, = by_kind["Deployment"]
    svc, = by_kind["Service"]
    pdb, = by_kind["PodDisruptionBudget"]
    cm, = by_kind["ConfigMap"]
    sec, = by_kind["Secret"]
    sm, = by_kind["ServiceMonitor"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    sel = dep["spec"]["selector"]["matchLabels"]
    assert sel.items() <= pod_labels.items()
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert dep["spec"]["replicas"] >= 2 and pdb["spec"]["minAvailable"] < dep["spec"]["replicas"]

    c, = dep["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] in ports
    assert all(p["targetPort"] in ports for p in svc["spec"]["ports"])
    listen = cm["data"]["SWITCHBOARD_LISTEN"]
    assert int(listen.rsplit(":", 1)[1]) == ports["http"] and listen.startswith("0.0.0.0:")
    assert set(cm["data"]) <= env_names(), sorted(set(cm["data"]) - env_names())
    assert c["envFrom"][0]["configMapRef"]["name"] == cm["metadata"]["name"]

    env = {e["name"]: e["value"] for e in c["env"]}
    token_path = env["SWITCHBOARD_ADMIN_TOKEN_FILE"]
    mount, = [m for m in c["volumeMounts"] if token_path.startswith(m["mountPath"] + "/")]
    vol, = [v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    assert vol["secret"]["secretName"] == sec["metadata"]["name"]
    assert os.path.basename(token_path) in sec["stringData"]
    # no published default token: switchboard refuses the empty one
    assert sec["stringData"][os.path.basename(token_path)] == ""

    sc = dep["spec"]["template"]["spec"]["securityContext"]
    assert sc["runAsNonRoot"] and sc["runAsUser"] != 0
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > int(cm["data"]["SWITCHBOARD_SHUTDOWN_TIMEOUT_S"]) + 5  # preStop sleep 5

    # ServiceMonitor (monitoring.coreos.com/v1): required fields and references
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    svc_ports = {p["name"] for p in svc["spec"]["ports"]}
    for ep in sm["spec"]["endpoints"]:
        assert ep["port"] in svc_ports and ep["path"] == "/metrics"


def test_empty_admin_token_secret_is_refused(tmp_path, redis):
    """What the shipped Secret does until an operator fills it in."""
    f = tmp_path / "admin-token"
    f.write_text("")
    p = run([os.path.join(sb_bin_dir(), "switchboard"), "--admin-token-file", str(f),
             "--redis", redis.url, "--listen", "127.0.0.1:%d" % free_port()],
            env=clean_env(), timeout=10)
    assert p.returncode != 0 and b"empty" in p.stderr, p


def test_kubectl_kustomize_builds():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed (not in Debian bookworm; the model check above runs)")
    p = run([kubectl, "kustomize", K8S])
    assert p.returncode == 0, p.stderr.decode()
    kinds = [d["kind"] for d in yaml.safe_load_all(p.stdout) if d]
    assert sorted(kinds) == sorted(["ConfigMap", "Secret", "Service", "Deployment",
                                    "PodDisruptionBudget", "ServiceMonitor"])
