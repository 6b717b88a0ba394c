"""circuit_open and busy (SPEC §4.2), from real faults: after 5 consecutive
connect_refused the 6th message falls back circuit_open at once without touching the
network, and after the cool-down (5 s) one probe push that succeeds closes the circuit;
with max_concurrency 1 and a slow agent, a concurrent second message falls back busy.
Both are decided after lease_expired and before the push, and both queue the message."""

import threading
import time

from harness import (a2a, assert_fallback, assert_pushed, free_port, register, send_v03,
                     unique_ws)

COOLDOWN_S = 5.0  # SB_CIRCUIT_COOLDOWN_MS


def test_circuit_opens_after_five_refusals_and_a_probe_closes_it(sb, agent):
    ws = unique_ws()
    port = free_port()
    assert register(sb, ws, "http://127.0.0.1:%d/" % port).status == 200
    for _ in range(5):
        body = send_v03()
        assert_fallback(sb, a2a(sb, ws, body), "connect_refused", body, ws,
                        check_queued=False)
    opened = time.time()
    ag = agent("ok", "--port", str(port))  # the agent is back, but the circuit is open
    body = send_v03()
    t0 = time.time()
    j = assert_fallback(sb, a2a(sb, ws, body), "circuit_open", body, ws)
    assert time.time() - t0 < 0.5, "an open circuit falls back at once"
    detail = j["result"]["metadata"]["switchboard"]["detail"]
    assert "circuit" in detail and "connect_refused" in detail, detail
    assert ag.posts() == [], "nothing is pushed while the circuit is open"

    time.sleep(max(0.0, opened + COOLDOWN_S + 0.3 - time.time()))
    probe = send_v03()
    r = a2a(sb, ws, probe)
    assert_pushed(r)  # the probe succeeded: closed
    for _ in range(2):
        assert_pushed(a2a(sb, ws, send_v03()))
    assert len(ag.posts()) == 3


def test_busy_at_max_concurrency(sb, agent):
    ag = agent("slow:1.5")
    ws = unique_ws()
    assert register(sb, ws, ag.url(), max_concurrency=1).status == 200
    first = send_v03()
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", a2a(sb, ws, first, timeout=10)))
    t.start()
    ag.wait_posts(1)  # the first push is in flight
    body = send_v03()
    t0 = time.time()
    j = assert_fallback(sb, a2a(sb, ws, body), "busy", body, ws)
    assert time.time() - t0 < 0.5, "busy falls back at once"
    assert "max_concurrency 1" in j["result"]["metadata"]["switchboard"]["detail"], j
    t.join(10)
    assert_pushed(out["r"])
    assert len(ag.posts()) == 1, "the busy message was not pushed"
    # a slot is free again
    assert_pushed(a2a(sb, ws, send_v03(), timeout=10))
