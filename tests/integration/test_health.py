"""Liveness, readiness and Redis reconnection (SPEC §3 /healthz /readyz, §1)."""

import os
import time

from harness import RedisServer, request


def test_healthz_and_readyz_answer_200_without_a_token(sb):
    assert request(sb, "GET", "/healthz").status == 200
    assert request(sb, "GET", "/readyz").status == 200


def test_public_routes_ignore_a_bad_token(sb):
    # A wrong Authorization header must not turn the public routes into 401s.
    assert request(sb, "GET", "/healthz", token="not-a-token").status == 200
    assert request(sb, "GET", "/readyz", token="not-a-token").status == 200


def test_metrics_needs_no_token(sb):
    r = request(sb, "GET", "/metrics")
    assert r.status not in (401, 403), r


def _wait_status(sb, path, want, timeout):
    deadline = time.time() + timeout
    seen = []
    while time.time() < deadline:
        try:
            st = request(sb, "GET", path, timeout=2.0).status
        except OSError as e:
            st = repr(e)
        seen.append(st)
        if st == want:
            return True, seen
        time.sleep(0.1)
    return False, seen


def test_readyz_follows_redis_down_and_back(workdir, make_sb):
    # A dedicated redis: this test kills it.
    r = RedisServer(os.path.join(workdir, "redis-flap"))
    r.start()
    try:
        sb = make_sb(redis_url=r.url, name="sb-flap")
        assert request(sb, "GET", "/readyz").status == 200

        r.stop()
        ok, seen = _wait_status(sb, "/readyz", 503, timeout=5.0)
        assert ok, "readyz never answered 503 after redis died; saw %s" % sorted(set(map(str, seen)))
        assert request(sb, "GET", "/healthz").status == 200, "liveness must not follow Redis"
        assert sb.alive(), "switchboard died when Redis went away"

        t0 = time.time()
        r.start()  # same port
        # back-off is at most 5 s; allow the reconnect plus the replica reload
        ok, seen = _wait_status(sb, "/readyz", 200, timeout=8.0)
        assert ok, "readyz not 200 again %.1fs after redis came back; saw %s" % (
            time.time() - t0, sorted(set(map(str, seen))))
    finally:
        r.stop()
