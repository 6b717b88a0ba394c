"""Is this Redis safe for queues? (SPEC §4.5): at start and on every reconnect switchboard
reads maxmemory-policy and persistence (CONFIG GET, INFO where CONFIG is disabled), logs a
warning for a Redis that can lose queued messages, shows the verdict in /readyz's body and
exports switchboard_redis_eviction_risk (0 safe, 1 unknown, 2 RDB only, 3 no persistence,
4 an eviction policy; docs/operations.md)."""

import os
import time

import pytest

import promtext
from harness import RedisServer, Switchboard, request

CASES = [
    # (redis-server arguments, eviction_policy, persistence, risk)
    (["--appendonly", "yes", "--maxmemory-policy", "noeviction"], "noeviction", "aof", 0),
    (["--appendonly", "yes", "--save", "900 1", "--maxmemory-policy", "noeviction"],
     "noeviction", "aof+rdb", 0),
    (["--save", "900 1"], "noeviction", "rdb", 2),
    ([], "noeviction", "none", 3),
    (["--appendonly", "yes", "--maxmemory-policy", "allkeys-lru"], "allkeys-lru", "aof", 4),
    (["--appendonly", "yes", "--maxmemory-policy", "volatile-ttl"], "volatile-ttl", "aof", 4),
    # CONFIG disabled (managed Redis): INFO tells the policy and AOF, never "save"
    (["--rename-command", "CONFIG", "", "--appendonly", "yes"], "noeviction", "aof", 0),
    (["--rename-command", "CONFIG", ""], "noeviction", "unknown", 1),
]


def eviction_risk(sb):
    _, e = promtext.scrape(sb)
    return e.samples[("switchboard_redis_eviction_risk", ())]


def wait_verdict(sb, timeout=10.0):
    deadline = time.time() + timeout
    while True:
        body = request(sb, "GET", "/readyz").json()
        if body["redis"].get("warning") != "Redis's settings have not been read yet" or \
                time.time() > deadline:
            return body
        time.sleep(0.05)


@pytest.mark.parametrize("args,policy,persistence,risk", CASES,
                         ids=["aof", "aof+rdb", "rdb", "none", "lru", "volatile", "noconfig-aof",
                              "noconfig"])
def test_verdict(workdir, args, policy, persistence, risk):
    d = os.path.join(workdir, "case-%d" % abs(hash(tuple(args))))
    redis = RedisServer(os.path.join(d, "redis"), extra_args=args).start()
    sb = Switchboard(os.path.join(d, "sb"), redis.url, name="sb-safety")
    try:
        sb.start()
        body = wait_verdict(sb)
        assert body["status"] == "ready", body
        v = body["redis"]
        assert (v["eviction_policy"], v["persistence"], v["eviction_risk"]) == \
            (policy, persistence, risk), v
        assert v["safe_for_queues"] == (risk == 0)
        assert ("warning" in v) == (risk != 0), v
        assert eviction_risk(sb) == risk
        lines = [l for l in sb.log_lines() if l.get("event") in ("redis_eviction_risk",
                                                                   "redis_safe")]
        assert lines, "no verdict logged"
        assert lines[-1]["event"] == ("redis_safe" if risk == 0 else "redis_eviction_risk"), \
            lines
        if risk:
            assert lines[-1]["level"] in ("warn", "warning"), lines[-1]
    finally:
        sb.stop()
        sb.kill()
        redis.stop()


def test_rechecked_on_reconnect(workdir):
    """A Redis that changes its policy and restarts is read again on the reconnect."""
    d = os.path.join(workdir, "reconnect")
    redis = RedisServer(os.path.join(d, "redis"),
                        extra_args=["--appendonly", "yes"]).start()
    sb = Switchboard(os.path.join(d, "sb"), redis.url, name="sb-safety")
    try:
        sb.start()
        assert wait_verdict(sb)["redis"]["eviction_risk"] == 0
        redis.stop()
        redis.extra_args = ["--appendonly", "yes", "--maxmemory-policy", "allkeys-lfu"]
        redis.start()
        deadline = time.time() + 15
        while eviction_risk(sb) != 4 and time.time() < deadline:
            time.sleep(0.1)
        assert eviction_risk(sb) == 4
        v = request(sb, "GET", "/readyz").json()["redis"]
        assert v["eviction_policy"] == "allkeys-lfu" and "evict" in v["warning"], v
    finally:
        sb.stop()
        sb.kill()
        redis.stop()


def test_make_run_redis_is_safe():
    """tools/run-local.sh starts make run's Redis with AOF and noeviction."""
    here = os.path.dirname(os.path.abspath(__file__))
    text = open(os.path.join(here, "..", "..", "tools", "run-local.sh")).read()
    assert "--appendonly yes" in text and "--maxmemory-policy noeviction" in text
