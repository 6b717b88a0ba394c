"""Pushes over HTTP/2 and TLS to agents (SPEC §4.1 "protocol", §4.2 "HTTP/2 is used where
the agent offers it"), end to end through a real switchboard.

The agent is tests/peers/h2_agent (C, nghttp2): it speaks HTTP/2 only — h2c with prior
knowledge in cleartext, ALPN "h2" over TLS — so a request it records proves switchboard
used HTTP/2. The TLS agent's certificate comes from a CA made at test time with the
openssl CLI; switchboard trusts it only through --upstream-ca.

`make integration` builds the peer and passes its directory in SB_PEERS; run directly,
this module builds it with `make peers` first.
"""

import base64
import json
import os
import select
import signal
import socket
import subprocess
import threading
import time
import uuid

import pytest

import harness
from harness import (LOOPBACK, a2a, assert_decision_logged, assert_fallback, clean_env,
                     fallback_detail, free_port, new_token, register, send_v03, unique_ws)


# --------------------------------------------------------------------------------------
# the HTTP/2 agent

def h2_agent_binary():
    d = os.environ.get("SB_PEERS")
    if d:
        return os.path.join(d, "h2_agent")
    path = os.path.join(harness.REPO, "build", "peers", "h2_agent")
    subprocess.run(["make", "-s", "-C", harness.REPO, "peers"], check=True, timeout=120,
                   stdout=subprocess.DEVNULL)
    return path


class H2Agent:
    """tests/peers/h2_agent as a separate process; reads what it recorded."""

    def __init__(self, workdir, mode="ok", cert=None, key=None):
        os.makedirs(workdir, exist_ok=True)
        tag = uuid.uuid4().hex[:8]
        self.record_path = os.path.join(workdir, "h2agent-%s-%s.jsonl" % (mode, tag))
        self.err_path = self.record_path[:-6] + ".stderr"
        self.mode = mode
        self.cert, self.key = cert, key
        self.proc = None
        self.port = None

    def start(self, wait_s=10.0):
        binary = h2_agent_binary()
        if not os.access(binary, os.X_OK):
            pytest.fail("%s is missing (run `make peers`)" % binary)
        open(self.record_path, "w").close()
        argv = [binary, "--port", "0", "--mode", self.mode, "--record", self.record_path]
        if self.cert:
            argv += ["--tls-cert", self.cert, "--tls-key", self.key]
        self.err = open(self.err_path, "wb")
        self.proc = harness.spawn(argv, "h2_agent %s" % self.mode, stdout=subprocess.PIPE,
                                  stderr=self.err)
        self.port = harness.wait_ready(self.proc, self.err_path, "h2_agent %s" % self.mode,
                                       wait_s)
        return self

    def stop(self):
        if self.proc is not None:
            harness.kill_group(self.proc, signal.SIGKILL)
            try:
                self.proc.stdout.close()
            except OSError:
                pass
            self.err.close()
            self.proc = None

    def url(self, path="/"):
        scheme = "https" if self.cert else "http"
        return "%s://%s:%d%s" % (scheme, LOOPBACK, self.port, path)

    def records(self):
        return harness.read_jsonl(self.record_path)

    def posts(self):
        return [r for r in self.records() if r["event"] == "request" and r["method"] == "POST"]

    def wait_posts(self, n, timeout=5.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            ps = self.posts()
            if len(ps) >= n:
                return ps
            time.sleep(0.02)
        return self.posts()

    def connections(self):
        return [r for r in self.records() if r["event"] == "connect"]

    @staticmethod
    def header(rec, name):
        vs = [v for k, v in rec["headers"] if k == name.lower()]
        return vs[0] if vs else None


@pytest.fixture
def h2_agent(workdir):
    started = []

    def make(mode="ok", cert=None, key=None):
        a = H2Agent(os.path.join(workdir, "agents"), mode, cert, key)
        started.append(a)
        return a.start()

    try:
        yield make
    finally:
        for a in started:
            a.stop()


# --------------------------------------------------------------------------------------
# a test CA, made with the openssl CLI

def openssl(*args, cwd):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, timeout=30,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def pki(workdir):
    """{"ca": CA cert, "cert"/"key": agent cert for 127.0.0.1 and localhost signed by the
    CA, "other_ca": an unrelated CA, "not_a_cert": a PEM key (no certificate)}."""
    d = os.path.join(workdir, "pki")
    os.makedirs(d, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    for name in ("ca", "other-ca"):
        openssl("req", "-x509", *ec, "-keyout", name + ".key", "-out", name + ".pem",
                "-days", "2", "-subj", "/CN=switchboard test %s" % name,
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    openssl("req", *ec, "-keyout", "agent.key", "-out", "agent.csr", "-subj", "/CN=agent",
            cwd=d)
    with open(os.path.join(d, "agent.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                "extendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "agent.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "agent.pem", "-days", "2", "-extfile", "agent.ext",
            cwd=d)
    return {"ca": os.path.join(d, "ca.pem"), "other_ca": os.path.join(d, "other-ca.pem"),
            "cert": os.path.join(d, "agent.pem"), "key": os.path.join(d, "agent.key"),
            "not_a_cert": os.path.join(d, "ca.key")}


@pytest.fixture(scope="module")
def ca_sb(module_make_sb, pki):
    """A switchboard that trusts the test CA (in addition to the system store)."""
    return module_make_sb(["--upstream-ca", pki["ca"]], name="sb-ca")


# --------------------------------------------------------------------------------------
# helpers

def assert_pushed_h2(r, rec):
    """Delivered: 2xx with X-Delivery-Mode: push, and the agent's JSON-RPC answer."""
    assert 200 <= r.status < 300, "want a pushed 2xx, got %r" % r
    assert r.header("X-Delivery-Mode") == "push", r
    assert rec["version"] == "HTTP/2", rec
    j = r.json()
    assert j["jsonrpc"] == "2.0" and "result" in j, j
    return j


def check_router_headers(rec, body, secret):
    assert H2Agent.header(rec, "authorization") == "Bearer %s" % secret
    assert H2Agent.header(rec, "x-switchboard-message-id") == body["params"]["message"]["messageId"]
    assert H2Agent.header(rec, "x-switchboard-kind") == "chat"
    assert (H2Agent.header(rec, "content-type") or "").startswith("application/json")
    assert H2Agent.header(rec, "content-length") == str(len(base64.b64decode(rec["body_b64"])))
    # HTTP/2 forbids connection-specific headers: none may reach the agent.
    names = [k for k, _ in rec["headers"]]
    for bad in ("connection", "keep-alive", "transfer-encoding", "host", "upgrade"):
        assert bad not in names, rec["headers"]
    assert all(k == k.lower() for k in names), names


# --------------------------------------------------------------------------------------
# h2c (prior knowledge)

def test_h2c_agent_gets_http2_pushes(sb, h2_agent):
    ag = h2_agent("ok")
    ws = unique_ws()
    r = register(sb, ws, ag.url("/a2a"), protocol="h2c")
    assert r.status == 200, r
    secret = r.json()["inbound_secret"]
    body = send_v03(text="over h2c")
    r = a2a(sb, ws, body)
    (rec,) = ag.wait_posts(1)
    j = assert_pushed_h2(r, rec)
    assert j["id"] == body["id"]
    assert j["result"]["parts"][0]["text"] == "echo: over h2c"
    assert rec["path"] == "/a2a"
    assert json.loads(base64.b64decode(rec["body_b64"])) == body
    check_router_headers(rec, body, secret)
    assert_decision_logged(sb, body["params"]["message"]["messageId"], ws, None, kind="chat")


def test_h2c_concurrent_pushes_share_connections(sb, h2_agent):
    """Many messages at once ride few multiplexed connections: at most one per worker
    thread (the sb fixture runs 2), instead of one per message."""
    ag = h2_agent("ok")
    ws = unique_ws()
    assert register(sb, ws, ag.url(), protocol="h2c").status == 200
    n = 16
    results = [None] * n

    def one(i):
        results[i] = a2a(sb, ws, send_v03(text="m%d" % i))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for i, r in enumerate(results):
        assert r is not None and r.status == 200, (i, r)
        assert r.header("X-Delivery-Mode") == "push", r
    posts = ag.wait_posts(n)
    assert len(posts) == n
    # (The registration probe is a GET in HTTP/1.1 on a connection of its own, refused by
    # this HTTP/2-only agent: count the connections that carried the pushes.)
    conns = {p["conn"] for p in posts}
    assert 1 <= len(conns) <= sb.threads, "one HTTP/2 connection per worker at most: %r" % conns


def test_h2c_only_agent_without_protocol_is_invalid_response(sb, h2_agent):
    """Registered without "protocol":"h2c", an http URL is spoken to in HTTP/1.1; an agent
    that only speaks HTTP/2 cannot answer that, and the fallback says so."""
    ag = h2_agent("ok")
    ws = unique_ws()
    assert register(sb, ws, ag.url(), protocol="http1").status == 200
    body = send_v03()
    j = assert_fallback(sb, a2a(sb, ws, body), "invalid_response", body, ws)
    assert "invalid HTTP response" in fallback_detail(j, body)


def test_h2c_stream_reset_is_connection_reset(sb, h2_agent):
    ag = h2_agent("rst")
    ws = unique_ws()
    assert register(sb, ws, ag.url(), protocol="h2c").status == 200
    body = send_v03()
    j = assert_fallback(sb, a2a(sb, ws, body), "connection_reset", body, ws)
    assert "RST_STREAM" in fallback_detail(j, body)
    assert len(ag.wait_posts(1)) == 1, "the agent saw it once: a reset is not retried"


# --------------------------------------------------------------------------------------
# TLS

def test_tls_agent_trusted_through_upstream_ca(ca_sb, h2_agent, pki):
    ag = h2_agent("ok", cert=pki["cert"], key=pki["key"])
    ws = unique_ws()
    r = register(ca_sb, ws, ag.url("/a2a"))  # "auto": ALPN offers h2, the agent picks it
    assert r.status == 200, r
    secret = r.json()["inbound_secret"]
    for i in range(3):
        body = send_v03(text="tls %d" % i)
        r = a2a(ca_sb, ws, body)
        recs = ag.wait_posts(i + 1)
        assert len(recs) == i + 1
        j = assert_pushed_h2(r, recs[-1])
        assert j["result"]["parts"][0]["text"] == "echo: tls %d" % i
        check_router_headers(recs[-1], body, secret)
    assert all(c["tls"] for c in ag.connections())
    conns = {p["conn"] for p in ag.posts()}
    assert len(conns) <= ca_sb.threads, "sessions are reused: %r" % conns


def test_tls_agent_untrusted_without_upstream_ca(sb, h2_agent, pki):
    """The same agent, but this switchboard was not told about the CA: tls_error, with
    OpenSSL's verdict in the detail, and nothing reaches the agent."""
    ag = h2_agent("ok", cert=pki["cert"], key=pki["key"])
    ws = unique_ws()
    assert register(sb, ws, ag.url("/a2a")).status == 200
    body = send_v03()
    j = assert_fallback(sb, a2a(sb, ws, body), "tls_error", body, ws)
    detail = fallback_detail(j, body)
    assert "certificate verify failed" in detail, detail
    assert "unable to get local issuer certificate" in detail, detail
    assert ag.posts() == []


def test_upstream_ca_from_environment(make_sb, h2_agent, pki, monkeypatch):
    """SWITCHBOARD_UPSTREAM_CA works like the flag."""
    plain_env = harness.clean_env

    def env_with_ca(extra=None):
        e = plain_env(extra)
        e["SWITCHBOARD_UPSTREAM_CA"] = pki["ca"]
        return e

    monkeypatch.setattr(harness, "clean_env", env_with_ca)
    inst = make_sb(name="sb-env-ca")  # started with the variable, no flag
    monkeypatch.undo()
    ag = h2_agent("ok", cert=pki["cert"], key=pki["key"])
    ws = unique_ws()
    assert register(inst, ws, ag.url()).status == 200
    body = send_v03()
    r = a2a(inst, ws, body)
    (rec,) = ag.wait_posts(1)
    assert_pushed_h2(r, rec)


@pytest.mark.parametrize("which", ["not_a_cert", "missing"])
def test_bad_upstream_ca_refuses_to_start(redis, workdir, pki, which):
    path = pki["not_a_cert"] if which == "not_a_cert" else os.path.join(workdir, "nope.pem")
    argv = [harness.sb_binary(), "--listen", "%s:%d" % (LOOPBACK, free_port()), "--redis",
            redis.url, "--admin-token", new_token(), "--threads", "1", "--upstream-ca", path]
    p = subprocess.run(argv, env=clean_env(), capture_output=True, timeout=15,
                       start_new_session=True)
    assert p.returncode != 0, p
    lines = [ln for ln in p.stderr.decode().splitlines() if ln.strip()]
    assert len(lines) == 1, "one clear line on stderr: %r" % p.stderr
    assert "--upstream-ca" in lines[0], lines[0]
    if which == "not_a_cert":
        assert "no PEM certificate" in lines[0], lines[0]


# --------------------------------------------------------------------------------------
# streaming

def test_h2_event_stream_relayed_as_it_happens(sb, h2_agent):
    """message/stream to an agent that answers text/event-stream over HTTP/2, three events
    300 ms apart: the caller gets the first event before the agent sent the last one."""
    ag = h2_agent("sse")
    ws = unique_ws()
    assert register(sb, ws, ag.url(), protocol="h2c").status == 200
    body = send_v03(text="stream me")
    body["method"] = "message/stream"
    raw = json.dumps(body).encode()
    s = socket.create_connection((LOOPBACK, sb.port), timeout=10)
    try:
        s.sendall(b"POST /workspaces/%s/a2a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                  b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                  % (ws.encode(), sb.admin_token.encode(), len(raw), raw))
        buf = b""
        first_event_at = None
        deadline = time.time() + 10
        while time.time() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            if first_event_at is None and b"echo 1: stream me" in buf:
                first_event_at = time.time()
            if b"echo 3: stream me" in buf:
                break
    finally:
        s.close()
    assert b"text/event-stream" in buf.split(b"\r\n\r\n", 1)[0].lower(), buf[:300]
    assert b"X-Delivery-Mode: push" in buf.split(b"\r\n\r\n", 1)[0], buf[:300]
    assert first_event_at is not None, buf
    sent = [r for r in ag.records() if r["event"] == "sse_event"]
    assert len(sent) == 3, sent
    assert first_event_at < sent[2]["time"], \
        "the first event must reach the caller before the agent sends the last one"
