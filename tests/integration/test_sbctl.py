"""bin/sbctl against a live switchboard: output, --json, errors and exit codes.

Exit codes (src/sbctl.c): 0 done, 1 the server said no, 2 usage, 3 unreachable.
`why` and `status` read the delivery views (GET /workspaces/{ws}/delivery, GET /delivery).
"""

import json
import os
import re
import subprocess

import pytest

from harness import clean_env, free_port, request, sb_bin_dir, unique_ws

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


class Run:
    def __init__(self, p):
        self.rc = p.returncode
        self.out = p.stdout.decode("utf-8", "replace")
        self.err = p.stderr.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.out)

    def field(self, key):
        """The value of a "key   value" line of the human output."""
        for line in self.out.splitlines():
            k, _, v = line.partition(" ")
            if k == key:
                return v.strip()
        raise AssertionError("no %r line in sbctl output:\n%s" % (key, self.out))

    def __repr__(self):
        return "<sbctl rc=%d\n--- stdout\n%s--- stderr\n%s>" % (self.rc, self.out, self.err)


def sbctl_path():
    return os.path.join(sb_bin_dir(), "sbctl")


def run(sb, *args, token=True, url=True, env=None, timeout=60):
    e = {}
    if url:
        e["SWITCHBOARD_URL"] = "http://127.0.0.1:%d" % sb.port
    if token:
        e["SWITCHBOARD_ADMIN_TOKEN"] = sb.admin_token if token is True else token
    e.update(env or {})
    p = subprocess.run([sbctl_path()] + list(args), env=clean_env(e), capture_output=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    return Run(p)


@pytest.fixture(autouse=True)
def _needs_sbctl():
    if not os.access(sbctl_path(), os.X_OK):
        pytest.fail("%s is missing (run `make`)" % sbctl_path())


def test_health(sb):
    r = run(sb, "health", token=False)
    assert r.rc == EXIT_OK, r
    assert r.field("alive") == "yes" and r.field("ready") == "yes", r
    j = run(sb, "--json", "health", token=False)
    assert j.rc == EXIT_OK, j
    assert j.json()["alive"] is True and j.json()["ready"] is True, j


def test_token_mint_and_revoke(sb):
    ws = unique_ws()
    m = run(sb, "token", "mint", ws)
    assert m.rc == EXIT_OK, m
    token, token_id = m.field("token"), m.field("token_id")
    assert m.field("workspace_id") == ws
    assert "only this once" in m.err
    assert request(sb, "GET", "/registry/%s" % ws, token=token).status == 404  # valid, no record
    v = run(sb, "token", "revoke", ws, token_id)
    assert v.rc == EXIT_OK, v
    assert token_id in v.out
    assert request(sb, "GET", "/registry/%s" % ws, token=token).status == 401
    again = run(sb, "--json", "token", "mint", ws)
    assert again.rc == EXIT_OK, again
    j = again.json()
    assert j["workspace_id"] == ws and j["token"].startswith("sbt_") and j["token_id"], j
    rj = run(sb, "--json", "token", "revoke", ws, j["token_id"])
    assert rj.rc == EXIT_OK and rj.json()["status"] == "revoked", rj
    # never print the admin token
    for r in (m, v, again, rj):
        assert sb.admin_token not in r.out + r.err


def test_register_and_send_push(sb, agent):
    ag = agent("ok")
    ws = unique_ws()
    r = run(sb, "register", ws, ag.url(), "--max-concurrency", "4", "--lease-s", "600")
    assert r.rc == EXIT_OK, r
    assert r.field("registered") == ws and r.field("delivery_mode") == "push", r
    assert r.field("inbound_secret").startswith("sbs_"), r
    assert r.field("probe").startswith("reachable"), r
    assert r.field("lease_expires_at") != "never", r
    rec = request(sb, "GET", "/registry/%s" % ws, token=sb.admin_token).json()
    assert rec["max_concurrency"] == 4 and rec["lease_s"] == 600, rec

    s = run(sb, "send", ws, "hello from sbctl", "--user", "op-1")
    assert s.rc == EXIT_OK, s
    assert s.field("mode") == "push" and s.field("http") == "200 OK", s
    assert "echo: hello from sbctl" in s.field("answer"), s
    [post] = ag.wait_posts(1)
    assert ag.header(post, "X-Switchboard-Kind") == "chat"
    assert ag.header(post, "X-Switchboard-User") == "op-1"
    sent = json.loads(ag.body_bytes(post))
    assert sent["method"] == "message/send"
    assert sent["params"]["message"]["parts"][0]["text"] == "hello from sbctl"

    j = run(sb, "--json", "send", ws, "again")
    assert j.rc == EXIT_OK, j
    assert j.json()["jsonrpc"] == "2.0" and "result" in j.json(), j


def test_send_fallback_shows_mode_and_reason(sb):
    ws = unique_ws()
    s = run(sb, "send", ws, "anyone there?")
    assert s.field("reason") == "no_endpoint", s
    if s.rc == EXIT_OK:  # queued (SPEC §4.3)
        assert s.field("mode") == "poll", s
        assert s.field("task").endswith("(submitted)"), s
    else:  # not stored: the server said no
        assert s.rc == EXIT_REFUSED, s
        assert s.field("http").startswith(("502", "503")), s


def test_register_poll_and_inbox(sb):
    ws = unique_ws()
    r = run(sb, "register", ws, "--poll")
    assert r.rc == EXIT_OK, r
    assert r.field("delivery_mode") == "poll", r
    s = run(sb, "send", ws, "for the inbox")
    assert s.field("reason") == "poll_mode", s
    mid = s.field("message_id")
    i = run(sb, "inbox", ws)
    if i.rc == EXIT_REFUSED and "does not serve" in i.err:
        pytest.skip("this switchboard has no inbox yet: %r" % i)
    assert i.rc == EXIT_OK, i
    assert ("%s: 1 ready, 0 leased" % ws) in i.out, i
    assert mid in i.out and "poll_mode" in i.out, i
    j = run(sb, "--json", "inbox", ws, "--max", "5")
    assert j.rc == EXIT_OK, j
    [m] = j.json()["messages"]
    assert m["message_id"] == mid and m["reason"] == "poll_mode", j
    # peeking leases nothing
    assert run(sb, "--json", "inbox", ws).json()["ready"] == 1


def test_why_prints_the_verdict_and_facts(sb):
    ws = unique_ws()
    s = run(sb, "send", ws, "nobody home")
    assert s.field("reason") == "no_endpoint", s
    r = run(sb, "why", ws)
    assert r.rc == EXIT_OK, r
    j = run(sb, "--json", "why", ws)
    assert j.rc == EXIT_OK, j
    body = j.json()
    assert body["workspace_id"] == ws and body["registered"] is False, body
    verdict = body["verdict"]
    assert verdict.startswith("Messages fall back to poll (no_endpoint)"), body
    # kubectl-describe layout: the verdict first, then sections of aligned fields
    lines = r.out.splitlines()
    assert lines[0].split() == ["Workspace:", ws], r
    assert lines[1].startswith("Verdict:") and lines[1].split(None, 1)[1] == verdict, r
    sections = [l[:-1] for l in lines if l and not l.startswith(" ") and l.endswith(":")]
    assert sections == ["Endpoint", "Circuit (this instance)", "Queue", "Probe",
                        "Refused registrations", "Recent attempts"], r
    assert "  Registered:            no" in r.out and "  Depth:                 1" in r.out, r
    # every "Key:  value" line puts its value in the same column
    kv_lines = [l for l in lines if re.match(r"^(  )?[A-Z][A-Za-z ()]*:\s{2,}\S", l)]
    cols = {len(l) - len(l.split(":", 1)[1].lstrip()) for l in kv_lines}
    assert len(kv_lines) > 15, r
    assert len(cols) == 1, "values aligned in one column: %r %r" % (cols, r.out)
    # a workspace nobody ever wrote to still has a view
    fresh = run(sb, "--json", "why", unique_ws())
    assert fresh.rc == EXIT_OK and fresh.json()["queue"]["depth"] == 0, fresh


def test_status_lists_backlogs_worst_first(sb):
    ws = unique_ws()
    assert run(sb, "send", ws, "queued").field("reason") == "no_endpoint"
    r = run(sb, "status")
    assert r.rc == EXIT_OK, r
    assert r.out.splitlines()[0].split()[:3] == ["WORKSPACE", "MODE", "DEPTH"], r
    row = [line for line in r.out.splitlines() if line.startswith(ws + " ")]
    assert len(row) == 1 and "no_endpoint" in row[0] and "closed" in row[0], r
    j = run(sb, "--json", "status")
    assert j.rc == EXIT_OK, j
    mine = [w for w in j.json()["workspaces"] if w["workspace_id"] == ws]
    assert len(mine) == 1 and mine[0]["queue_depth"] == 1, j
    assert mine[0]["last_reason"] == "no_endpoint" and mine[0]["verdict"], j
    # a workspace token is not the admin: GET /delivery is refused
    tok = run(sb, "--json", "token", "mint", ws).json()["token"]
    f = run(sb, "status", token=tok)
    assert f.rc == EXIT_REFUSED and "HTTP 403 forbidden" in f.err, f


def test_unreachable_switchboard_exits_3(sb):
    port = free_port()
    r = run(sb, "--url", "http://127.0.0.1:%d" % port, "health", token=False)
    assert r.rc == EXIT_UNREACHABLE, r
    assert ("cannot reach switchboard at http://127.0.0.1:%d" % port) in r.err, r
    assert "refused" in r.err.lower(), r
    e = run(sb, "status", url=False, env={"SWITCHBOARD_URL": "http://127.0.0.1:%d" % port})
    assert e.rc == EXIT_UNREACHABLE, e
    n = run(sb, "--url", "http://nonexistent.invalid:8080", "--timeout", "5", "health",
            token=False)
    assert n.rc == EXIT_UNREACHABLE and "resolve" in n.err, n


def test_default_url_and_env(sb):
    # without --url and SWITCHBOARD_URL, the default 127.0.0.1:8080 is used (whatever
    # answers there, the error or answer names it)
    r = run(sb, "health", token=False, url=False, timeout=30)
    assert r.rc in (EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE), r
    if r.rc == EXIT_UNREACHABLE:
        assert "http://127.0.0.1:8080" in r.err, r
    # --url beats SWITCHBOARD_URL
    f = run(sb, "--url", "http://127.0.0.1:%d" % sb.port, "health", token=False, url=False,
            env={"SWITCHBOARD_URL": "http://127.0.0.1:%d" % free_port()})
    assert f.rc == EXIT_OK, f


@pytest.mark.parametrize("args", [
    (),
    ("frobnicate",),
    ("why",),
    ("why", "a", "b"),
    ("why", "not/a/ws"),
    ("send", "ws-1"),
    ("send", "ws-1", "hi", "--poll"),
    ("status", "--max", "3"),
    ("inbox", "ws-1", "--max", "0"),
    ("register", "ws-1"),
    ("register", "ws-1", "http://x/", "--lease-s", "soon"),
    ("register", "ws-1", "http://x/", "--protocol", "spdy"),
    ("token",),
    ("token", "mint"),
    ("token", "revoke", "ws-1", "bad id!"),
    ("--timeout", "0", "health"),
    ("--url", "ftp://127.0.0.1/", "health"),
    ("--url", "http://127.0.0.1/", "--cacert", "/nonexistent", "health"),
    ("messages", "ws-1"),
    ("inbox", "ack", "ws-1"),
    ("inbox", "lease", "ws-1", "--protocol", "h2c"),
    ("tokens",),
    ("deregister", "not/a/ws"),
    ("--no-such-flag", "health"),
])
def test_usage_errors_exit_2(sb, args):
    r = run(sb, *args)
    assert r.rc == EXIT_USAGE, r
    assert r.err.startswith("sbctl: "), r
    assert r.out == "", r


def test_help_and_version(sb):
    h = run(sb, "--help")
    assert h.rc == EXIT_OK and "usage: sbctl" in h.out and "token mint WS" in h.out, h
    v = run(sb, "--version")
    assert v.rc == EXIT_OK and v.out.startswith("sbctl "), v


def test_admin_token_sources(sb, workdir):
    # none at all: a usage error that says where the token comes from
    r = run(sb, "status", token=False)
    assert r.rc == EXIT_USAGE and "SWITCHBOARD_ADMIN_TOKEN" in r.err, r
    # --token-file (trailing newline stripped) beats the environment
    path = os.path.join(workdir, "sbctl-token")
    with open(path, "w") as f:
        f.write(sb.admin_token + "\n")
    ws = unique_ws()
    t = run(sb, "--token-file", path, "token", "mint", ws, token="wrong-token")
    assert t.rc == EXIT_OK, t
    # SWITCHBOARD_ADMIN_TOKEN_FILE when nothing else is given
    t2 = run(sb, "token", "mint", ws, token=False, env={"SWITCHBOARD_ADMIN_TOKEN_FILE": path})
    assert t2.rc == EXIT_OK, t2
    empty = os.path.join(workdir, "sbctl-empty")
    open(empty, "w").close()
    e = run(sb, "--token-file", empty, "status")
    assert e.rc == EXIT_USAGE and "empty" in e.err, e
    missing = run(sb, "--token-file", os.path.join(workdir, "nope"), "status")
    assert missing.rc == EXIT_USAGE and "cannot read" in missing.err, missing


def test_server_refusals_exit_1_with_code_and_message(sb):
    ws = unique_ws()
    r = run(sb, "token", "mint", ws, token="not-the-admin-token")
    assert r.rc == EXIT_REFUSED, r
    assert "HTTP 401 unauthorized" in r.err and "SWITCHBOARD_ADMIN_TOKEN" in r.err, r
    # a workspace token is not the admin: 403 forbidden
    tok = run(sb, "--json", "token", "mint", ws).json()["token"]
    f = run(sb, "token", "mint", unique_ws(), token=tok)
    assert f.rc == EXIT_REFUSED and "HTTP 403 forbidden" in f.err, f
    # 400 from the registry, --json prints the server's error body as well
    b = run(sb, "--json", "register", ws, "http://169.254.169.254/")
    assert b.rc == EXIT_REFUSED, b
    assert b.json()["error"]["code"] == "upstream_forbidden", b
    assert "HTTP 400 upstream_forbidden" in b.err, b
    # revoking an unknown token id
    v = run(sb, "token", "revoke", ws, "tok_0000000000000000")
    assert v.rc == EXIT_REFUSED and "HTTP 404" in v.err, v


def test_status_fits_120_columns(sb):
    ws = unique_ws()
    assert run(sb, "send", ws, "queued").field("reason") == "no_endpoint"
    r = run(sb, "status")
    assert r.rc == EXIT_OK, r
    assert max(len(l) for l in r.out.splitlines()) <= 120, r
    assert any(l.startswith(ws + " ") for l in r.out.splitlines()), r


def test_new_commands_deregister_messages_inbox_tokens_help(sb):
    ws = unique_ws()
    reg = run(sb, "register", ws, "--poll")
    assert reg.rc == EXIT_OK, reg
    s = run(sb, "--json", "send", ws, "for the inbox")
    assert s.rc == EXIT_OK, s
    peek = run(sb, "--json", "inbox", ws).json()
    (m,) = peek["messages"]
    # messages WS ID: the record, with its attempts
    rec = run(sb, "messages", ws, m["message_id"])
    assert rec.rc == EXIT_OK and rec.field("state") == "queued", rec
    assert rec.field("reason") == "poll_mode", rec
    assert run(sb, "--json", "messages", ws, m["message_id"]).json()["message_id"] == \
        m["message_id"]
    gone = run(sb, "messages", ws, "no-such-message")
    assert gone.rc == EXIT_REFUSED and "404" in gone.err, gone
    # inbox lease | nack | lease | ack
    lease = run(sb, "inbox", "lease", ws, "--lease-s", "30")
    assert lease.rc == EXIT_OK and m["id"] in lease.out, lease
    nack = run(sb, "inbox", "nack", ws, m["id"])
    assert nack.rc == EXIT_OK and "released" in nack.out, nack
    again = run(sb, "--json", "inbox", "lease", ws).json()
    assert [x["id"] for x in again["messages"]] == [m["id"]], again
    ack = run(sb, "inbox", "ack", ws, m["id"])
    assert ack.rc == EXIT_OK and "acked" in ack.out, ack
    assert run(sb, "inbox", "ack", ws, m["id"] + "00").rc == EXIT_REFUSED
    assert run(sb, "--json", "messages", ws, m["message_id"]).json()["state"] == "acked"
    # tokens WS: ids and times, never tokens
    minted = run(sb, "--json", "token", "mint", ws).json()
    t = run(sb, "tokens", ws)
    assert t.rc == EXIT_OK and minted["token_id"] in t.out and minted["token"] not in t.out, t
    assert run(sb, "--json", "tokens", ws).json()["tokens"][0]["token_id"] == minted["token_id"]
    # deregister WS
    d = run(sb, "deregister", ws)
    assert d.rc == EXIT_OK and "deregistered" in d.out, d
    assert request(sb, "GET", "/registry/%s" % ws, token=sb.admin_token).status == 404
    assert run(sb, "deregister", ws).rc == EXIT_REFUSED
    # help
    h = run(sb, "help", token=False)
    assert h.rc == EXIT_OK and "inbox lease WS" in h.out and "tokens WS" in h.out, h
