"""test_limits.py — inputs and loads that must stay bounded.

  - params.metadata.expires_in_s of any size or type never breaks the fallback: huge
    values are clamped (the queue TTL wins), unusable ones ignored, small ones win;
  - pushes to an agent that never answers do not pile up while callers give up: at most
    --max-inflight-per-endpoint (default 64) wait per workspace and instance, counted as
    TCP connections at the agent; the rest fall back `busy` at once.
"""

import http.client
import json
import threading
import time

from harness import LOOPBACK, a2a, inbox_peek, register, send_v03, unique_ws


def iso_ms(s):
    """Milliseconds of an ISO-8601 UTC time as switchboard writes it."""
    import datetime
    d = datetime.datetime.strptime(s.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z")
    return d.timestamp() * 1000

DEFAULT_INFLIGHT = 64


def test_expires_in_s_extremes(sb):
    ws = unique_ws("exp")
    assert register(sb, ws, delivery_mode="poll").status == 200
    ttl_ms = 7 * 24 * 3600 * 1000  # --queue-ttl-s default
    cases = [('1e300', ttl_ms), ('99999999999999999999', ttl_ms),
             ('9223372036854775807', ttl_ms), ('-1e300', ttl_ms), ('30.5', ttl_ms),
             ('"30"', ttl_ms), ('null', ttl_ms), ('0', ttl_ms), ('30', 30000),
             ('6e1', 60000)]
    want = {}
    for raw, expect_ms in cases:
        body = send_v03()
        text = json.dumps(body)
        # spliced in as raw JSON text, so the exact spelling reaches switchboard
        text = text[:-2] + ', "metadata": {"expires_in_s": %s}}}' % raw
        t0 = time.time() * 1000
        r = a2a(sb, ws, text.encode())
        assert r.status == 200 and r.header("X-Delivery-Reason") == "poll_mode", (raw, r)
        want[body["params"]["message"]["messageId"]] = (raw, t0, expect_ms)
    p = inbox_peek(sb, ws, max=100)
    assert p.status == 200, p
    got = {m["message_id"]: m for m in p.json()["messages"]}
    assert set(got) == set(want), "every message is queued"
    for mid, (raw, t0, expect_ms) in want.items():
        m = got[mid]
        life = iso_ms(m["expires_at"]) - iso_ms(m["enqueued_at"])
        assert abs(life - expect_ms) <= 2000, "expires_in_s %s: lives %d ms, want %d" % (
            raw, life, expect_ms)
    assert sb.alive()


def _give_up_caller(port, token, ws, stop, results, lock):
    """Sends, waits 0.3 s for an answer, hangs up and sends again (a caller giving up)."""
    while not stop.is_set():
        body = json.dumps(send_v03()).encode()
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=0.3)
        try:
            conn.request("POST", "/workspaces/%s/a2a" % ws, body=body,
                         headers={"Authorization": "Bearer " + token,
                                  "Content-Type": "application/json"})
            r = conn.getresponse()
            data = r.read()
            with lock:
                results.append((r.status, r.getheader("X-Delivery-Reason"), data))
        except (OSError, http.client.HTTPException):
            with lock:
                results.append((None, None, b""))
        finally:
            conn.close()


def test_unanswered_pushes_stay_bounded(make_sb, agent):
    # A short graceful stop: the waiting pushes are queued at the stop, not awaited.
    sb = make_sb(["--shutdown-timeout-s", "2"])
    hang = agent("hang", "--hang-max-s", "30")
    ws = unique_ws("pile")
    assert register(sb, ws, url=hang.url()).status == 200
    stop = threading.Event()
    results, lock = [], threading.Lock()
    callers = [threading.Thread(target=_give_up_caller,
                                args=(sb.port, sb.admin_token, ws, stop, results, lock),
                                daemon=True) for _ in range(16)]
    for t in callers:
        t.start()
    try:
        deadline = time.time() + 30
        busy = []
        while time.time() < deadline:
            with lock:
                busy = [r for r in results if r[1] == "busy"]
                gave_up = sum(1 for r in results if r[0] is None)
            if len(busy) >= 50 and gave_up >= DEFAULT_INFLIGHT:
                break
            time.sleep(0.05)
    finally:
        stop.set()
        for t in callers:
            t.join(timeout=10)
    assert not any(t.is_alive() for t in callers)
    with lock:
        gave_up = sum(1 for r in results if r[0] is None)
    assert gave_up >= DEFAULT_INFLIGHT, "callers gave up %d times" % gave_up
    assert len(busy) >= 50, "no busy fallbacks after %d attempts" % len(results)
    connects = [r for r in hang.records() if r.get("event") == "connect"]
    posts = hang.posts()
    assert len(connects) <= DEFAULT_INFLIGHT, \
        "%d upstream connections to an agent that never answers (bound %d)" % (
            len(connects), DEFAULT_INFLIGHT)
    assert len(posts) <= DEFAULT_INFLIGHT, len(posts)
    detail = json.loads(busy[0][2])["result"]["metadata"]["switchboard"]["detail"]
    assert "--max-inflight-per-endpoint" in detail and str(DEFAULT_INFLIGHT) in detail, detail
    # Still serving: another workspace on a live agent is pushed at once.
    ok = agent("ok")
    other = unique_ws("ok")
    assert register(sb, other, url=ok.url()).status == 200
    r = a2a(sb, other, send_v03())
    assert r.status == 200 and r.header("X-Delivery-Mode") == "push", r
