"""Messages that cannot be pushed: every reason produced from a real fault (SPEC §4.2),
each answered per §4.3 and stored in the poll queue before the answer.

The contract (harness.assert_fallback): HTTP 200, X-Delivery-Mode: poll,
X-Delivery-Reason: <reason>, a JSON-RPC result holding an A2A Task in state submitted
(v0.3, or {"task": ...} with TASK_STATE_SUBMITTED for v1.0 methods) whose
metadata.switchboard names the reason and a one-line detail; the decision log line (mode
poll) carries the same reason; the message is in the workspace's queue with its original
request. A stream request gets the same answer as one SSE event. With Redis down the
answer is 503 + Retry-After + JSON-RPC error -32050 naming the reason: never a 200.
"""

import os
import time
from datetime import datetime

import pytest

import harness
from harness import (BlackholeListener, a2a, assert_fallback, assert_undeliverable,
                     fallback_detail, free_port, inbox_peek, mint, register, send_stream_v03,
                     send_stream_v10, send_v03, send_v10, unique_ws)


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


def queued(sb, ws, task_id):
    """The queued message of |task_id| as the inbox shows it."""
    p = inbox_peek(sb, ws, max=100)
    assert p.status == 200, p
    mine = [m for m in p.json()["messages"] if m["task_id"] == task_id]
    assert len(mine) == 1, p.json()
    return mine[0]


# ---- before any push ----------------------------------------------------------------------

def test_no_endpoint(sb):
    ws = unique_ws()
    body = send_v03()
    j = assert_fallback(sb, a2a(sb, ws, body), "no_endpoint", body, ws, kind="chat")
    one_line(fallback_detail(j, body))
    m = queued(sb, ws, j["result"]["id"])
    assert m["attempted"] is False and m["delivery_count"] == 0, m
    assert m["kind"] == "chat" and m["source"] == "platform", m


def test_no_endpoint_v10_task_shape(sb):
    ws = unique_ws()
    body = send_v10()
    j = assert_fallback(sb, a2a(sb, ws, body), "no_endpoint", body, ws)
    task = j["result"]["task"]
    assert task["status"]["state"] == "TASK_STATE_SUBMITTED", task
    assert task["metadata"]["switchboard"]["delivery_mode"] == "poll", task


@pytest.mark.parametrize("make_body", [send_stream_v03, send_stream_v10],
                         ids=["message/stream", "SendStreamingMessage"])
def test_stream_falls_back_as_one_sse_event(sb, make_body):
    ws = unique_ws()
    body = make_body()
    r = a2a(sb, ws, body)
    assert_fallback(sb, r, "no_endpoint", body, ws)
    assert r.body.startswith(b"data: ") and r.body.endswith(b"\n\n"), r


def test_context_id_kept_and_expiry_from_metadata(sb):
    ws = unique_ws()
    body = send_v03(extra_params={"metadata": {"expires_in_s": 30}})
    body["params"]["message"]["contextId"] = "ctx-kept"
    j = assert_fallback(sb, a2a(sb, ws, body), "no_endpoint", body, ws)
    assert j["result"]["contextId"] == "ctx-kept", j
    m = queued(sb, ws, j["result"]["id"])
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ"
    life = (datetime.strptime(m["expires_at"], fmt) -
            datetime.strptime(m["enqueued_at"], fmt)).total_seconds()
    assert abs(life - 30) < 0.01, "expires_in_s 30 is below --queue-ttl-s: %r" % m


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


def test_lease_expired(sb, agent):
    ag = agent("ok")
    ws = unique_ws()
    assert register(sb, ws, ag.url(), lease_s=1).status == 200
    time.sleep(1.2)
    body = send_v03()
    assert_fallback(sb, a2a(sb, ws, body), "lease_expired", body, ws)
    assert ag.posts() == [], "a lapsed registration is not pushed to"


def test_non_send_not_pushed_is_502_and_not_queued(sb):
    """tasks/get for the agent's own task is not a message: it is not queued."""
    ws = unique_ws()
    body = {"jsonrpc": "2.0", "id": "g1", "method": "tasks/get", "params": {"id": "agent-task"}}
    assert_undeliverable(a2a(sb, ws, body), "no_endpoint", body, status=502)
    assert inbox_peek(sb, ws).json()["messages"] == []


# ---- transport failures -------------------------------------------------------------------

def test_connect_refused(sb):
    ws = unique_ws()
    port = free_port()  # nothing listens there
    assert register(sb, ws, "http://127.0.0.1:%d/" % port).status == 200
    body = send_v03()
    t0 = time.time()
    j = assert_fallback(sb, a2a(sb, ws, body), "connect_refused", body, ws)
    assert time.time() - t0 < 2.0, "a refused connect is immediate, not a timeout"
    one_line(fallback_detail(j, body))
    assert queued(sb, ws, j["result"]["id"])["attempted"] is False


def test_connect_refused_delegation_logs_kind_and_source(sb):
    ws, src = unique_ws(), unique_ws()
    tok = mint(sb, src)["token"]
    assert register(sb, ws, "http://127.0.0.1:%d/" % free_port()).status == 200
    body = send_v03()
    j = assert_fallback(sb, a2a(sb, ws, body, token=tok), "connect_refused", body, ws,
                        kind="delegation", source=src)
    m = queued(sb, ws, j["result"]["id"])
    assert m["kind"] == "delegation" and m["source"] == src, m


def test_connect_timeout(short_sb):
    bh = BlackholeListener()
    try:
        ws = unique_ws()
        assert register(short_sb, ws, bh.url()).status == 200
        body = send_v03()
        t0 = time.time()
        r = a2a(short_sb, ws, body, timeout=10)
        took = time.time() - t0
        assert_fallback(short_sb, r, "connect_timeout", body, ws)
        assert 0.8 <= took <= 4.0, "--connect-timeout-ms 1000, answered after %.2fs" % took
    finally:
        bh.close()


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
    detail = fallback_detail(j, body)
    one_line(detail)
    assert str(status) in detail, "detail should name the status: %r" % detail
    assert len(ag.posts()) == 1, "exactly one push attempt"


def test_http_status_v10_task_shape(sb, agent):
    ag = agent("status:404")
    ws = unique_ws()
    assert register(sb, ws, ag.url()).status == 200
    body = send_v10()
    assert_fallback(sb, a2a(sb, ws, body), "http_404", body, ws)


def test_response_timeout(short_sb, agent):
    ag = agent("hang")
    ws = unique_ws()
    assert register(short_sb, ws, ag.url()).status == 200
    body = send_v03()
    t0 = time.time()
    r = a2a(short_sb, ws, body, timeout=10)
    took = time.time() - t0
    j = assert_fallback(short_sb, r, "response_timeout", body, ws)
    assert 0.8 <= took <= 4.0, "--push-timeout-s 1, answered after %.2fs" % took
    assert len(ag.posts()) == 1
    assert queued(short_sb, ws, j["result"]["id"])["attempted"] is True


@pytest.mark.parametrize("mode", ["reset", "reset_now"])
def test_connection_reset(sb, agent, mode):
    ag = agent(mode)
    ws = unique_ws()
    assert register(sb, ws, ag.url()).status == 200
    body = send_v03()
    j = assert_fallback(sb, a2a(sb, ws, body), "connection_reset", body, ws)
    assert len(ag.posts()) >= 1
    assert queued(sb, ws, j["result"]["id"])["attempted"] is True


@pytest.mark.parametrize("mode", ["garbage", "notjson", "notjsonrpc"])
def test_invalid_response(sb, agent, mode):
    ag = agent(mode)
    ws = unique_ws()
    assert register(sb, ws, ag.url()).status == 200
    body = send_v03()
    j = assert_fallback(sb, a2a(sb, ws, body), "invalid_response", body, ws)
    assert len(ag.posts()) == 1
    assert queued(sb, ws, j["result"]["id"])["attempted"] is True


def test_tls_error(sb, agent):
    """https to a port that speaks plain HTTP: the TLS handshake fails."""
    ag = agent("ok")
    ws = unique_ws()
    assert register(sb, ws, "https://127.0.0.1:%d/" % ag.port).status == 200
    body = send_v03()
    j = assert_fallback(sb, a2a(sb, ws, body), "tls_error", body, ws)
    one_line(fallback_detail(j, body))
    assert ag.posts() == [], "no request is sent over a failed handshake"


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


# ---- neither pushed nor queued --------------------------------------------------------------

def test_redis_down_is_503_never_a_false_200(workdir, make_sb, agent):
    """With Redis gone, a message that cannot be pushed cannot be stored either: 503 with
    Retry-After and the reason; a message that can be pushed still is (the registry
    replica keeps serving)."""
    red = harness.RedisServer(os.path.join(workdir, "redis-down"))
    red.start()
    try:
        inst = make_sb(redis_url=red.url, name="sb-redis-down")
        ag = agent("ok")
        ws_ok, ws_dead = unique_ws(), unique_ws()
        assert register(inst, ws_ok, ag.url()).status == 200
        assert register(inst, ws_dead, "http://127.0.0.1:%d/" % free_port()).status == 200
        red.stop()
        for ws, reason in ((unique_ws(), "no_endpoint"), (ws_dead, "connect_refused")):
            body = send_v03()
            j = assert_undeliverable(a2a(inst, ws, body), reason, body, status=503)
            assert j["error"]["data"].get("queued") is False, j
            line = harness.assert_decision_logged(inst, body["params"]["message"]["messageId"],
                                                  ws, reason)
            assert line["mode"] == "rejected", line
        body = send_stream_v03()
        assert_undeliverable(a2a(inst, unique_ws(), body), "no_endpoint", body, status=503)
        body = send_v03()
        r = a2a(inst, ws_ok, body)
        harness.assert_pushed(r)
        assert r.json()["result"]["parts"][0]["text"] == "echo: hello", r
    finally:
        red.stop()
