"""Messages that cannot be pushed: every reason produced from a real fault (SPEC §4.2).

Interim contract (the poll queue of §4.3 is not built yet): the caller gets HTTP 502,
X-Delivery-Reason: <reason>, and a JSON-RPC error -32050 whose message names the reason
and whose data is {"reason","detail"}; the decision log line carries the same reason.
When the queue lands, harness.assert_fallback changes to the 200/Task answer of §4.3.
"""

import time

import pytest

from harness import (a2a, assert_fallback, free_port, mint, register, send_v03, unique_ws)


@pytest.fixture(scope="module")
def short_sb(module_make_sb):
    """Short timeouts so that timeout reasons take about a second."""
    return module_make_sb(["--push-timeout-s", "1", "--connect-timeout-ms", "1000"],
                          name="sb-short")


@pytest.fixture(scope="module")
def strict_sb(module_make_sb):
    """No --allow-upstream: loopback upstreams are forbidden."""
    return module_make_sb(allow_loopback=False, name="sb-strict")


def one_line(detail):
    assert "\n" not in detail and "\r" not in detail, "detail must be one line: %r" % detail


# ---- before any push ----------------------------------------------------------------------

def test_no_endpoint(sb):
    ws = unique_ws()
    body = send_v03()
    j = assert_fallback(sb, a2a(sb, ws, body), "no_endpoint", body, ws, kind="chat")
    one_line(j["error"]["data"]["detail"])


def test_poll_mode(sb, agent):
    ag = agent("ok")
    ws = unique_ws()
    assert register(sb, ws, ag.url(), delivery_mode="poll").status == 200
    body = send_v03()
    assert_fallback(sb, a2a(sb, ws, body), "poll_mode", body, ws)
    assert ag.posts() == []


def test_registered_without_url_is_poll_mode(sb):
    ws = unique_ws()
    assert register(sb, ws).status == 200
    body = send_v03()
    assert_fallback(sb, a2a(sb, ws, body), "poll_mode", body, ws)


# ---- transport failures -------------------------------------------------------------------

def test_connect_refused(sb):
    ws = unique_ws()
    port = free_port()  # nothing listens there
    assert register(sb, ws, "http://127.0.0.1:%d/" % port).status == 200
    body = send_v03()
    t0 = time.time()
    j = assert_fallback(sb, a2a(sb, ws, body), "connect_refused", body, ws)
    assert time.time() - t0 < 2.0, "a refused connect is immediate, not a timeout"
    one_line(j["error"]["data"]["detail"])


def test_connect_refused_delegation_logs_kind_and_source(sb):
    ws, src = unique_ws(), unique_ws()
    tok = mint(sb, src)["token"]
    assert register(sb, ws, "http://127.0.0.1:%d/" % free_port()).status == 200
    body = send_v03()
    assert_fallback(sb, a2a(sb, ws, body, token=tok), "connect_refused", body, ws,
                    kind="delegation", source=src)


STATUS_CASES = [(404, "http_404"), (500, "http_5xx"), (503, "http_5xx"), (502, "http_5xx"),
                (401, "http_401"), (403, "http_403"), (405, "http_405"), (413, "http_413"),
                (429, "http_429"), (418, "http_other"), (302, "http_other"),
                (400, "http_other")]


@pytest.mark.parametrize("status,reason", STATUS_CASES, ids=[str(s) for s, _ in STATUS_CASES])
def test_http_status_reasons(sb, agent, status, reason):
    ag = agent("status:%d" % status)
    ws = unique_ws()
    assert register(sb, ws, ag.url("/a2a")).status == 200
    body = send_v03()
    j = assert_fallback(sb, a2a(sb, ws, body), reason, body, ws)
    detail = j["error"]["data"]["detail"]
    one_line(detail)
    assert str(status) in detail, "detail should name the status: %r" % detail
    assert len(ag.posts()) == 1, "exactly one push attempt"


def test_response_timeout(short_sb, agent):
    ag = agent("hang")
    ws = unique_ws()
    assert register(short_sb, ws, ag.url()).status == 200
    body = send_v03()
    t0 = time.time()
    r = a2a(short_sb, ws, body, timeout=10)
    took = time.time() - t0
    assert_fallback(short_sb, r, "response_timeout", body, ws)
    assert 0.8 <= took <= 4.0, "--push-timeout-s 1, answered after %.2fs" % took
    assert len(ag.posts()) == 1


@pytest.mark.parametrize("mode", ["reset", "reset_now"])
def test_connection_reset(sb, agent, mode):
    ag = agent(mode)
    ws = unique_ws()
    assert register(sb, ws, ag.url()).status == 200
    body = send_v03()
    assert_fallback(sb, a2a(sb, ws, body), "connection_reset", body, ws)
    assert len(ag.posts()) >= 1


@pytest.mark.parametrize("mode", ["garbage", "notjson", "notjsonrpc"])
def test_invalid_response(sb, agent, mode):
    ag = agent(mode)
    ws = unique_ws()
    assert register(sb, ws, ag.url()).status == 200
    body = send_v03()
    assert_fallback(sb, a2a(sb, ws, body), "invalid_response", body, ws)
    assert len(ag.posts()) == 1


def test_dns_error(short_sb):
    ws = unique_ws()
    r = register(short_sb, ws, "http://nonexistent.invalid:8080/")
    assert r.status == 200, "an unresolvable host is not refused at register: %r" % r
    probe = r.json().get("probe")
    if isinstance(probe, dict):  # the probe itself is checked in test_registry.py
        assert probe.get("reachable") is False, r.json()
    body = send_v03()
    t0 = time.time()
    assert_fallback(short_sb, a2a(short_sb, ws, body, timeout=10), "dns_error", body, ws)
    assert time.time() - t0 < 4.0, "DNS is bounded by --connect-timeout-ms 1000"


def test_upstream_forbidden_hostname(strict_sb, agent):
    """"localhost" resolves to a loopback address, which an instance without
    --allow-upstream refuses. A daemon may catch that at register (it resolves the name:
    400 upstream_forbidden) or only at push time (reason upstream_forbidden). Either is
    the contract; what must never happen is a request reaching the agent."""
    ag = agent("ok")
    ws = unique_ws()
    r = register(strict_sb, ws, "http://localhost:%d/" % ag.port)
    if r.status == 400:
        assert r.json()["error"]["code"] == "upstream_forbidden", r
        body = send_v03()
        assert_fallback(strict_sb, a2a(strict_sb, ws, body), "no_endpoint", body, ws)
    else:
        assert r.status == 200, r
        body = send_v03()
        assert_fallback(strict_sb, a2a(strict_sb, ws, body), "upstream_forbidden", body, ws)
    assert ag.requests() == [], "a forbidden upstream was contacted: %r" % ag.requests()
