"""HTTP/1.1 robustness of switchboard's own listener, driven over raw sockets."""

import json
import os
import socket
import subprocess
import time

import pytest

import harness
from harness import FakeAgent, RawHTTP, register, send_v03, unique_ws


def head(method, path, token=None, extra=(), body=None):
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: 127.0.0.1"]
    if token:
        lines.append("Authorization: Bearer %s" % token)
    lines.extend(extra)
    if body is not None:
        lines.append("Content-Type: application/json")
        lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


@pytest.fixture
def ok_ws(sb, agent):
    ag = agent("ok")
    ws = unique_ws()
    assert register(sb, ws, ag.url()).status == 200
    return ag, ws


def test_pipelined_requests_answered_in_order(sb, ok_ws):
    ag, ws = ok_ws
    b1 = json.dumps(send_v03(text="first")).encode()
    data = (head("GET", "/registry/%s" % unique_ws()) +          # 401: no token
            head("POST", "/workspaces/%s/a2a" % ws, sb.admin_token, body=b1) +  # 200 push
            head("GET", "/healthz"))                              # 200
    with RawHTTP(sb.port) as c:
        c.send(data)
        r1 = c.read_response()
        r2 = c.read_response()
        r3 = c.read_response()
    assert r1.status == 401, r1.raw_head
    assert r2.status == 200 and r2.header("X-Delivery-Mode") == "push", (r2.raw_head, r2.body)
    assert b"echo: first" in r2.body
    assert r3.status == 200, r3.raw_head
    assert b"echo" not in r3.body


def test_keep_alive_connection_serves_many_requests(sb):
    with RawHTTP(sb.port) as c:
        for _ in range(5):
            c.send(head("GET", "/healthz"))
            r = c.read_response()
            assert r.status == 200
            assert (r.header("Connection") or "").lower() != "close"


def test_chunked_request_body(sb, ok_ws):
    ag, ws = ok_ws
    body = json.dumps(send_v03(text="chunky " * 50)).encode()
    pieces = [body[i:i + 37] for i in range(0, len(body), 37)]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    req = ("POST /workspaces/%s/a2a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
           "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
           % (ws, sb.admin_token)).encode()
    with RawHTTP(sb.port) as c:
        c.send(req)
        for i in range(0, len(chunked), 100):  # in several segments
            c.send(chunked[i:i + 100])
            time.sleep(0.005)
        r = c.read_response()
    assert r.status == 200 and r.header("X-Delivery-Mode") == "push", (r.raw_head, r.body)
    (rec,) = ag.wait_posts(1)
    assert FakeAgent.body_bytes(rec) == body, "the reassembled body must reach the agent"


@pytest.mark.parametrize("raw", [
    b"THIS IS NOT HTTP\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET /healthz HTTP/1.1 extra\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTX/1.1\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nBad Header Without Colon\r\n\r\n",
    b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
])
def test_malformed_request_is_400(sb, raw):
    with RawHTTP(sb.port) as c:
        c.send(raw)
        r = c.read_response()
    assert r.status == 400, (raw, r.raw_head)


def test_headers_over_16k_are_431(sb):
    big = "X-Big: " + "a" * 17000
    with RawHTTP(sb.port) as c:
        c.send(head("GET", "/healthz", extra=[big]))
        r = c.read_response()
    assert r.status == 431, r.raw_head


def test_many_headers_over_16k_are_431(sb):
    extra = ["X-H%d: %s" % (i, "b" * 100) for i in range(200)]  # ~21 KiB in total
    with RawHTTP(sb.port) as c:
        c.send(head("GET", "/healthz", extra=extra))
        r = c.read_response()
    assert r.status == 431, r.raw_head


def test_headers_just_under_the_limit_are_fine(sb):
    extra = ["X-Pad: " + "c" * 12000]
    with RawHTTP(sb.port) as c:
        c.send(head("GET", "/healthz", extra=extra))
        r = c.read_response()
    assert r.status == 200, r.raw_head


@pytest.fixture(scope="module")
def impatient_sb(module_make_sb):
    return module_make_sb(["--request-timeout-s", "1"], name="sb-impatient")


@pytest.mark.parametrize("partial", [
    b"GET /healthz HTTP/1.1\r\nHost:",                                        # head unfinished
    b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"a\":",  # body short
])
def test_slow_client_gets_408_or_close(impatient_sb, partial):
    with RawHTTP(impatient_sb.port, timeout=6.0) as c:
        t0 = time.time()
        c.send(partial)
        got = b""
        c.sock.settimeout(0.1)
        while time.time() - t0 < 5.0 and b"\r\n\r\n" not in got:
            try:
                chunk = c.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break  # a reset is a close too
            if not chunk:
                break
            got += chunk
        took = time.time() - t0
        try:
            c.sock.settimeout(0.2)
            closed = c.sock.recv(1) == b""
        except socket.timeout:
            closed = False
        except OSError:
            closed = True
    assert got[:12] in (b"HTTP/1.1 408", b"HTTP/1.0 408") or (got == b"" and closed), \
        "want 408 or a close, got %r" % got[:200]
    assert took <= 3.0, "--request-timeout-s 1, but the slow client was cut after %.2fs" % took
    assert impatient_sb.alive()


def test_expect_100_continue_raw(sb, ok_ws):
    ag, ws = ok_ws
    body = json.dumps(send_v03(text="e" * 50000)).encode()
    with RawHTTP(sb.port) as c:
        c.send(("POST /workspaces/%s/a2a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                "Content-Type: application/json\r\nContent-Length: %d\r\n"
                "Expect: 100-continue\r\n\r\n" % (ws, sb.admin_token, len(body))).encode())
        c.sock.settimeout(1.0)
        t0 = time.time()
        interim = c.read_response()
        assert interim.status == 100, "want 100 Continue before the body, got %r" % (
            interim.raw_head,)
        assert time.time() - t0 < 1.0
        c.sock.settimeout(5.0)
        c.send(body)
        r = c.read_response()
    assert r.status == 200 and r.header("X-Delivery-Mode") == "push", r.raw_head


def test_expect_100_continue_with_curl(sb, ok_ws, workdir):
    ag, ws = ok_ws
    path = os.path.join(workdir, "big-%s.json" % ws)
    with open(path, "wb") as f:
        f.write(json.dumps(send_v03(text="c" * 300000)).encode())
    argv = ["curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}",
            "-H", "Authorization: Bearer %s" % sb.admin_token,
            "-H", "Content-Type: application/json", "-H", "Expect: 100-continue",
            "--data-binary", "@" + path,
            "http://127.0.0.1:%d/workspaces/%s/a2a" % (sb.port, ws)]
    t0 = time.time()
    p = subprocess.run(argv, capture_output=True, timeout=15)
    took = time.time() - t0
    assert p.stdout == b"200", (p.stdout, p.stderr)
    # curl waits 1 s for "100 Continue" before sending anyway; under 1 s means it came
    assert took < 1.0, "curl -d @bigfile took %.2fs: was 100 Continue sent?" % took


def test_expect_100_continue_refused_early_when_too_big(module_make_sb):
    small = module_make_sb(["--max-body-bytes", "1024"], name="sb-small-expect")
    with RawHTTP(small.port) as c:
        c.send(("POST /workspaces/%s/a2a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                "Content-Type: application/json\r\nContent-Length: 50000\r\n"
                "Expect: 100-continue\r\n\r\n" % (unique_ws(), small.admin_token)).encode())
        r = c.read_response()
        if r.status == 100:  # tolerated, but then the final answer must still be 413
            try:
                c.send(b"x" * 50000)
            except OSError:
                pass
            r = c.read_response()
    assert r.status == 413, r.raw_head


def test_unknown_route_is_404_and_wrong_method_is_405_or_404(sb):
    r = harness.request(sb, "GET", "/no/such/route", token=sb.admin_token)
    assert r.status == 404, r
    r = harness.request(sb, "GET", "/workspaces/%s/a2a" % unique_ws(), token=sb.admin_token)
    assert r.status in (404, 405), r
