"""GET /metrics (SPEC §5.1): public, Prometheus text format 0.0.4, exact counters.

Every counting test scrapes before and after the traffic it makes and asserts the exact
difference, so tests sharing the module's switchboard do not disturb each other (they run
one after the other). Fallbacks are counted by the mode the caller actually saw
(X-Delivery-Mode: poll when queued; no header and 502/503 when rejected), so the tests
hold whether or not the poll queue answers.
"""

import os
import subprocess
import threading
import time
from collections import Counter

import pytest

import promtext
from harness import (RedisServer, a2a, free_port, mint, register, request, send_v03,
                     unique_ws)

REASONS = ["no_endpoint", "poll_mode", "lease_expired", "backlog", "circuit_open", "busy", "dns_error",
           "connect_refused", "connect_timeout", "tls_error", "upstream_forbidden", "http_401",
           "http_403", "http_404", "http_405", "http_413", "http_429", "http_5xx",
           "http_other", "response_timeout", "connection_reset", "invalid_response"]
ALLOWED_LABELS = {"kind", "mode", "reason", "route", "code", "le", "version", "outcome"}
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def mode_of(r):
    """The delivery mode a caller saw: push, poll (queued) or rejected."""
    m = r.header("X-Delivery-Mode")
    if m in ("push", "poll"):
        return m
    assert r.status in (502, 503), "a message neither pushed nor queued must be 502/503: %r" % r
    return "rejected"


def delta(before, after, name, **labels):
    return after.value(name, **labels) - before.get(name, 0.0, **labels)


def test_metrics_is_public_prometheus_text(sb):
    for token in (None, "not-a-token"):
        r = request(sb, "GET", "/metrics", token=token)
        assert r.status == 200, r
        assert r.header("Content-Type") == CONTENT_TYPE, r
        promtext.parse(r.body.decode("utf-8"))


def test_fixed_series_are_all_present(sb):
    _, e = promtext.scrape(sb)
    for fam, typ in [("switchboard_messages_total", "counter"),
                     ("switchboard_poll_fallbacks_total", "counter"),
                     ("switchboard_push_duration_seconds", "histogram"),
                     ("switchboard_queue_depth", "gauge"),
                     ("switchboard_queue_oldest_age_seconds", "gauge"),
                     ("switchboard_inbox_leases_total", "counter"),
                     ("switchboard_inbox_acks_total", "counter"),
                     ("switchboard_inbox_redeliveries_total", "counter"),
                     ("switchboard_dead_letters_total", "counter"),
                     ("switchboard_drained_total", "counter"),
                     ("switchboard_drain_buffered_bytes", "gauge"),
                     ("switchboard_endpoints", "gauge"),
                     ("switchboard_circuits_open", "gauge"),
                     ("switchboard_redis_up", "gauge"),
                     ("switchboard_http_requests_total", "counter"),
                     ("switchboard_connections", "gauge")]:
        assert e.families.get(fam) == typ, "%s should be a %s: %r" % (fam, typ, e.families)
    # one series per reason of the closed list, pre-initialised, nothing else
    got = sorted(l["reason"] for l, _ in e.series("switchboard_poll_fallbacks_total"))
    assert got == sorted(REASONS)
    for kind in ("chat", "delegation"):
        for mode in ("push", "poll", "rejected"):
            assert e.get("switchboard_messages_total", kind=kind, mode=mode) is not None
    assert sorted(l["reason"] for l, _ in e.series("switchboard_dead_letters_total")) == \
        ["expired", "max_deliveries"]
    assert sorted(l["mode"] for l, _ in e.series("switchboard_endpoints")) == ["poll", "push"]
    assert e.value("switchboard_redis_up") == 1
    assert e.value("switchboard_connections") >= 1  # this scrape's own connection
    [(labels, v)] = e.series("switchboard_build_info")
    assert v == 1 and labels["version"]


def test_counters_move_exactly_on_pushes_and_fallbacks(sb, agent):
    ag = agent("ok")
    ws_push, ws_none, ws_refused = unique_ws(), unique_ws(), unique_ws()
    assert register(sb, ws_push, ag.url()).status == 200
    assert register(sb, ws_refused, "http://127.0.0.1:%d/" % free_port()).status == 200
    tok = mint(sb, unique_ws("src"))["token"]

    _, before = promtext.scrape(sb)
    seen = Counter()
    a2a_codes = Counter()
    for _ in range(5):
        r = a2a(sb, ws_push, send_v03())
        assert mode_of(r) == "push", r
        seen[("chat", "push")] += 1
        a2a_codes[r.status] += 1
    for _ in range(3):
        r = a2a(sb, ws_push, send_v03(), token=tok)
        assert mode_of(r) == "push", r
        seen[("delegation", "push")] += 1
        a2a_codes[r.status] += 1
    for _ in range(4):
        r = a2a(sb, ws_none, send_v03())
        assert r.header("X-Delivery-Reason") == "no_endpoint", r
        seen[("chat", mode_of(r))] += 1
        a2a_codes[r.status] += 1
    for _ in range(2):
        r = a2a(sb, ws_refused, send_v03(), token=tok)
        assert r.header("X-Delivery-Reason") == "connect_refused", r
        seen[("delegation", mode_of(r))] += 1
        a2a_codes[r.status] += 1
    _, after = promtext.scrape(sb)

    for kind in ("chat", "delegation"):
        for mode in ("push", "poll", "rejected"):
            assert delta(before, after, "switchboard_messages_total", kind=kind, mode=mode) == \
                seen[(kind, mode)], (kind, mode, seen)
    for reason in REASONS:
        want = {"no_endpoint": 4, "connect_refused": 2}.get(reason, 0)
        assert delta(before, after, "switchboard_poll_fallbacks_total", reason=reason) == want, \
            reason
    # every push round trip, failed ones included: 8 delivered + 2 refused connects
    assert delta(before, after, "switchboard_push_duration_seconds_count") == 10
    for code, n in a2a_codes.items():
        assert delta(before, after, "switchboard_http_requests_total",
                     route="/workspaces/{ws}/a2a", code=str(code)) == n, (code, a2a_codes)
    assert delta(before, after, "switchboard_http_request_duration_seconds_count",
                 route="/workspaces/{ws}/a2a") == 14
    assert after.value("switchboard_upstream_idle_connections") >= 1, "keep-alive pool"


def test_http_requests_counted_by_route_pattern(sb):
    ws = unique_ws()
    _, before = promtext.scrape(sb)
    for _ in range(7):
        assert request(sb, "GET", "/healthz").status == 200
    assert request(sb, "GET", "/no/such/route").status == 404
    assert request(sb, "GET", "/registry/%s" % ws).status == 401
    assert request(sb, "DELETE", "/healthz").status == 405
    _, after = promtext.scrape(sb)
    assert delta(before, after, "switchboard_http_requests_total", route="/healthz",
                 code="200") == 7
    assert delta(before, after, "switchboard_http_requests_total", route="unmatched",
                 code="404") == 1
    assert delta(before, after, "switchboard_http_requests_total", route="/registry/{ws}",
                 code="401") == 1
    assert delta(before, after, "switchboard_http_requests_total", route="unmatched",
                 code="405") == 1
    assert delta(before, after, "switchboard_http_request_duration_seconds_count",
                 route="/healthz") == 7


def test_no_per_workspace_or_per_message_labels(sb, agent):
    ag = agent("ok")
    wss = [unique_ws("card") for _ in range(3)]
    mids = []
    for ws in wss:
        assert register(sb, ws, ag.url()).status == 200
        body = send_v03()
        mids.append(body["params"]["message"]["messageId"])
        a2a(sb, ws, body)
        a2a(sb, unique_ws("none"), send_v03())
    r, e = promtext.scrape(sb)
    # process_* values are large numbers (bytes, epoch seconds) that may hold any port's
    # digits by chance; the labels they would leak through are checked below.
    text = "\n".join(l for l in r.body.decode().splitlines() if "process_" not in l)
    for s in wss + mids + [ag.url(), str(ag.port)]:
        assert s not in text, "%r leaked into /metrics" % s
    assert e.label_names() <= ALLOWED_LABELS, e.label_names()
    for labels, _ in e.series("switchboard_http_requests_total"):
        assert labels["route"] in ("unmatched", "other") or labels["route"].startswith("/"), labels


def test_histograms_are_cumulative_and_consistent(sb, agent):
    ag = agent("ok")
    ws = unique_ws()
    assert register(sb, ws, ag.url()).status == 200
    for _ in range(3):
        a2a(sb, ws, send_v03())
    _, e = promtext.scrape(sb)
    hs = promtext.histograms(e)
    fams = {k[0] for k in hs}
    assert {"switchboard_push_duration_seconds", "switchboard_http_request_duration_seconds",
            "switchboard_redis_command_duration_seconds"} <= fams, fams
    for key, h in hs.items():
        les = [le for le, _ in h["buckets"]]
        counts = [n for _, n in h["buckets"]]
        assert les == sorted(les) and les[-1] == float("inf"), key
        assert counts == sorted(counts), "buckets must be cumulative: %r %r" % (key, h)
        assert counts[-1] == h["count"], "+Inf must equal _count: %r" % (key,)
        assert h["sum"] >= 0
    assert e.value("switchboard_push_duration_seconds_count") >= 3


def test_endpoint_and_circuit_gauges(sb):
    _, before = promtext.scrape(sb)
    ws_push, ws_poll = unique_ws(), unique_ws()
    refused = "http://127.0.0.1:%d/" % free_port()
    assert register(sb, ws_push, refused).status == 200
    assert register(sb, ws_poll, delivery_mode="poll").status == 200
    _, mid = promtext.scrape(sb)
    assert delta(before, mid, "switchboard_endpoints", mode="push") == 1
    assert delta(before, mid, "switchboard_endpoints", mode="poll") == 1
    # five consecutive failures open the circuit (circuit.h SB_CIRCUIT_THRESHOLD)
    for _ in range(5):
        r = a2a(sb, ws_push, send_v03())
        assert r.header("X-Delivery-Reason") == "connect_refused", r
    r = a2a(sb, ws_push, send_v03())
    assert r.header("X-Delivery-Reason") == "circuit_open", r
    _, after = promtext.scrape(sb)
    assert delta(mid, after, "switchboard_circuits_open") == 1
    assert delta(mid, after, "switchboard_poll_fallbacks_total", reason="circuit_open") == 1
    assert request(sb, "DELETE", "/registry/%s" % ws_poll, token=sb.admin_token).status == 204
    _, gone = promtext.scrape(sb)
    assert delta(after, gone, "switchboard_endpoints", mode="poll") == -1


def test_exact_under_concurrent_clients(module_make_sb):
    inst = module_make_sb(threads=4, name="sb-metrics-4t")
    _, before = promtext.scrape(inst)
    errors = []

    def client():
        try:
            for _ in range(50):
                assert request(inst, "GET", "/healthz").status == 200
        except Exception as exc:  # noqa: BLE001 — reported below
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    _, after = promtext.scrape(inst)
    assert delta(before, after, "switchboard_http_requests_total", route="/healthz",
                 code="200") == 400
    assert delta(before, after, "switchboard_http_request_duration_seconds_count",
                 route="/healthz") == 400


def _inbox(sb, ws, **q):
    qs = "&".join("%s=%s" % kv for kv in q.items())
    r = request(sb, "GET", "/workspaces/%s/inbox?%s" % (ws, qs), token=sb.admin_token)
    assert r.status == 200, r
    return r.json()["messages"]


def test_inbox_and_dead_letter_counters(module_make_sb):
    inst = module_make_sb(["--max-deliveries", "2"], name="sb-metrics-inbox")
    ws = unique_ws()
    assert register(inst, ws, delivery_mode="poll").status == 200
    for _ in range(2):
        r = a2a(inst, ws, send_v03())
        assert r.header("X-Delivery-Mode") == "poll", r
    _, before = promtext.scrape(inst)
    first, second = _inbox(inst, ws, max=2)
    assert request(inst, "POST", "/workspaces/%s/inbox/%s/ack" % (ws, first["id"]),
                   token=inst.admin_token).status == 200
    assert request(inst, "POST", "/workspaces/%s/inbox/%s/nack" % (ws, second["id"]),
                   token=inst.admin_token).status == 200
    [again] = _inbox(inst, ws, max=2)
    assert again["id"] == second["id"] and again["delivery_count"] == 2, again
    r = request(inst, "POST", "/workspaces/%s/inbox/%s/nack" % (ws, again["id"]),
                token=inst.admin_token)
    assert r.status == 200 and r.json().get("dead_reason") == "max_deliveries", r
    _, after = promtext.scrape(inst)
    assert delta(before, after, "switchboard_inbox_leases_total") == 3
    assert delta(before, after, "switchboard_inbox_redeliveries_total") == 1
    assert delta(before, after, "switchboard_inbox_acks_total") == 1
    assert delta(before, after, "switchboard_dead_letters_total", reason="max_deliveries") == 1
    assert delta(before, after, "switchboard_dead_letters_total", reason="expired") == 0


def test_recovery_drain_counted_as_drained_not_as_messages(workdir, make_sb, agent):
    # An instance and a Redis of its own: the counters are process-wide, and the module's
    # instance may be retrying another test's workspace during this test's window.
    r = RedisServer(os.path.join(workdir, "redis-metrics-drain"))
    r.start()
    try:
        inst = make_sb(redis_url=r.url, name="sb-metrics-drain")
        ws = unique_ws()
        for _ in range(2):
            rep = a2a(inst, ws, send_v03())
            assert rep.header("X-Delivery-Mode") == "poll", rep
        _, before = promtext.scrape(inst)
        ag = agent("ok")
        assert register(inst, ws, ag.url()).status == 200
        deadline = time.time() + 10
        while True:
            _, after = promtext.scrape(inst)
            if delta(before, after, "switchboard_drained_total") >= 2 or time.time() > deadline:
                break
            time.sleep(0.1)
        assert delta(before, after, "switchboard_drained_total") == 2
        assert len(ag.posts()) == 2
        assert delta(before, after, "switchboard_push_duration_seconds_count") == 2
        for kind in ("chat", "delegation"):
            for mode in ("push", "poll", "rejected"):
                assert delta(before, after, "switchboard_messages_total", kind=kind,
                             mode=mode) == 0
    finally:
        r.stop()


def test_redis_up_follows_redis(workdir, make_sb):
    r = RedisServer(os.path.join(workdir, "redis-metrics-flap"))
    r.start()
    try:
        inst = make_sb(redis_url=r.url, name="sb-metrics-flap")
        assert promtext.scrape(inst)[1].value("switchboard_redis_up") == 1
        r.stop()
        deadline = time.time() + 5
        while promtext.scrape(inst)[1].value("switchboard_redis_up") != 0:
            assert time.time() < deadline, "switchboard_redis_up stayed 1 with Redis gone"
            time.sleep(0.1)
        r.start()
        deadline = time.time() + 10
        while promtext.scrape(inst)[1].value("switchboard_redis_up") != 1:
            assert time.time() < deadline, "switchboard_redis_up not back to 1"
            time.sleep(0.1)
    finally:
        r.stop()


def test_promtool_check_metrics_passes(sb, agent):
    tool = promtext.promtool()
    if tool is None:
        pytest.skip("promtool not installed (Debian package prometheus; `make deps`)")
    ag = agent("ok")
    ws = unique_ws()
    assert register(sb, ws, ag.url()).status == 200
    a2a(sb, ws, send_v03())
    a2a(sb, unique_ws(), send_v03())
    r, _ = promtext.scrape(sb)
    p = subprocess.run([tool, "check", "metrics"], input=r.body, capture_output=True,
                       timeout=30)
    assert p.returncode == 0, "promtool check metrics:\n%s%s" % (
        p.stdout.decode(), p.stderr.decode())
