"""circuit_open and busy (SPEC §4.2), from real faults: after 5 consecutive
connect_refused the 6th message falls back circuit_open at once without touching the
network, and after the cool-down (5 s) one probe push that succeeds closes the circuit —
switchboard's own redelivery of the queued messages is that probe; with max_concurrency 1
and a slow agent, a concurrent second message falls back busy and is redelivered once the
slot is free. Both are decided after lease_expired and before the push, and both queue
the message."""

import threading
import time

from harness import (FakeAgent, a2a, assert_fallback, assert_pushed, free_port, register,
                     request, send_v03, unique_ws)

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

    # The redelivery's push is the half-open probe (SPEC §4.4): the 6 queued messages go
    # out by themselves and their success closes it — at the end of the cool-down, or
    # earlier, as soon as switchboard's watch of the unreachable agent sees its card
    # answer again (docs/queue.md).
    deadline = opened + COOLDOWN_S + 5
    while time.time() < deadline and len(ag.posts()) < 6:
        time.sleep(0.05)
    assert len(ag.posts()) == 6, "the queued messages, redelivered by switchboard"
    for _ in range(3):
        assert_pushed(a2a(sb, ws, send_v03()))
    assert len(ag.posts()) == 9


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
    # The busy message was queued, not pushed beside the first; once the slot is free
    # switchboard redelivers it itself (SPEC §4.4), after the first push ended.
    posts = ag.wait_posts(2, timeout=8)
    assert [FakeAgent.header(p, "X-Switchboard-Message-Id") for p in posts] == \
        [first["params"]["message"]["messageId"], body["params"]["message"]["messageId"]]
    assert posts[1]["time"] >= posts[0]["time"] + 1.0, "the busy message waited its turn"
    deadline = time.time() + 8
    while time.time() < deadline and request(
            sb, "GET", "/workspaces/%s/delivery" % ws,
            token=sb.admin_token).json()["circuit"]["inflight"] > 0:
        time.sleep(0.05)
    # a slot is free again
    assert_pushed(a2a(sb, ws, send_v03(), timeout=10))
