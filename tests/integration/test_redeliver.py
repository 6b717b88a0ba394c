"""Redelivery by switchboard itself (SPEC §4.4): a push-mode agent that comes back gets
its backlog without registering or heartbeating again — oldest first, each message
acked, the retries on a schedule (first about 1 s after the fallback, then doubling),
one instance driving a workspace at a time, the scheduler's lease moving when its holder
dies, and identical failures collapsed into one attempt of the delivery record."""

import os
import time

import pytest

from harness import (FakeAgent, RedisServer, a2a, free_port, register, request, send_v03,
                     unique_ws)
from promtext import scrape


def fixed_agent(workdir, port, mode="ok"):
    a = FakeAgent(os.path.join(workdir, "agents"), mode, port=port)
    os.makedirs(a.workdir, exist_ok=True)
    return a.start()


def mid(body):
    return body["params"]["message"]["messageId"]


def queue(sb, ws, n, prefix="m"):
    out = []
    for i in range(n):
        body = send_v03(text="%s %d" % (prefix, i))
        r = a2a(sb, ws, body)
        assert r.status == 200 and r.header("X-Delivery-Mode") == "poll", r
        out.append(mid(body))
    return out


def record(sb, ws, message_id):
    r = request(sb, "GET", "/workspaces/%s/messages/%s" % (ws, message_id),
                token=sb.admin_token)
    assert r.status == 200, r
    return r.json()


def wait_states(sb, ws, mids, state, timeout):
    deadline = time.time() + timeout
    while True:
        recs = [record(sb, ws, m) for m in mids]
        if all(r["state"] == state for r in recs) or time.time() >= deadline:
            return recs
        time.sleep(0.1)


def received(ag):
    return [FakeAgent.header(p, "X-Switchboard-Message-Id") for p in ag.posts()]


def drained(rec, outcome):
    return [a for a in rec["attempts"] if a.get("drained") and a["outcome"] == outcome]


def test_agent_back_without_heartbeat_gets_backlog_in_order(sb, workdir):
    ws = unique_ws()
    port = free_port()
    ag = fixed_agent(workdir, port)
    try:
        assert register(sb, ws, ag.url("/a2a")).status == 200
        ag.stop()
        mids = queue(sb, ws, 3)
        back = time.time()
        ag = fixed_agent(workdir, port)  # same port, no register, no heartbeat
        deadline = back + 5.0
        while time.time() < deadline and len(ag.posts()) < 3:
            time.sleep(0.05)
        assert received(ag) == mids, "all 3, oldest first, within 5 s of the agent's return"
        recs = wait_states(sb, ws, mids, "acked", 3.0)
        for rec in recs:
            assert rec["state"] == "acked", rec
            assert len(drained(rec, "delivered")) == 1, rec["attempts"]
            kinds = [a["outcome"] for a in rec["attempts"]]
            assert "leased" not in kinds and "nacked" not in kinds, kinds
    finally:
        ag.stop()


def test_5xx_agent_that_recovers(sb, workdir):
    ws = unique_ws()
    port = free_port()
    ag = fixed_agent(workdir, port, "status:503")
    try:
        assert register(sb, ws, ag.url("/a2a")).status == 200
        mids = queue(sb, ws, 2)
        # switchboard retries by itself: the first about 1 s after the fallback, then 2 s
        deadline = time.time() + 8
        while time.time() < deadline and len(ag.posts()) < 4:
            time.sleep(0.1)
        posts = ag.posts()
        assert len(posts) >= 4, "the initial pushes and at least two retries: %d" % len(posts)
        # the verdict says when the next retry is due and what the last one got
        v = request(sb, "GET", "/workspaces/%s/delivery" % ws, token=sb.admin_token).json()
        assert "switchboard redelivers them itself: next retry in " in v["verdict"] or \
            "the next retry is due now" in v["verdict"], v["verdict"]
        assert "failed with http_5xx" in v["verdict"], v["verdict"]
        rd = v["queue"]["redelivery"]
        assert rd["last_outcome"] == "http_5xx" and rd["last_at"], rd
        # the failures of one message read as one attempt with a count
        rec = record(sb, ws, mids[0])
        failed = drained(rec, "failed")
        assert len(failed) == 1, rec["attempts"]
        assert failed[0]["reason"] == "http_5xx" and failed[0].get("count", 1) >= 1, failed
        ag.stop()
        ag = fixed_agent(workdir, port, "ok")
        recs = wait_states(sb, ws, mids, "acked", 12.0)
        assert [r["state"] for r in recs] == ["acked", "acked"], recs
        assert received(ag) == mids
        for rec in recs:
            assert rec["state"] == "acked"
            assert len(drained(rec, "delivered")) == 1, rec["attempts"]
            assert rec["attempts"][-1]["outcome"] == "delivered", rec["attempts"]
        # the metrics count every step of it
        _, e = scrape(sb)
        assert e.value("switchboard_redeliveries_total", outcome="failed") >= 2
        assert e.value("switchboard_redeliveries_total", outcome="delivered") >= 2
        assert e.value("switchboard_redeliveries_total", outcome="refused") >= 0
        # retries never count as deliveries (they do not make a max_deliveries dead letter)
        r = request(sb, "GET", "/workspaces/%s/delivery" % ws, token=sb.admin_token).json()
        assert r["queue"]["depth"] == 0 and r["queue"]["dead_letters"] == 0, r["queue"]
    finally:
        ag.stop()


def test_successful_push_starts_redelivery(sb, redis, workdir):
    """A live push that is delivered while a backlog waits starts the redelivery at once,
    long before its scheduled retry (here pushed a minute away)."""
    ws = unique_ws()
    port = free_port()
    ag = fixed_agent(workdir, port, "status:503")
    try:
        assert register(sb, ws, ag.url("/a2a")).status == 200
        mids = queue(sb, ws, 1, prefix="waiting")
        with redis.client() as c:  # a long back-off in force
            c.call("ZADD", "sb:{sb}:redeliver", str(int(time.time() * 1000) + 60000), ws)
        ag.stop()
        ag = fixed_agent(workdir, port, "ok")
        live = send_v03(text="live")
        r = a2a(sb, ws, live)
        assert r.status == 200 and r.header("X-Delivery-Mode") == "push", r
        deadline = time.time() + 3
        while time.time() < deadline and len(ag.posts()) < 2:
            time.sleep(0.05)
        assert received(ag) == [mid(live)] + mids, "the backlog follows the live push"
    finally:
        ag.stop()


def leader_of(redis):
    with redis.client() as c:
        members = c.call("ZRANGEBYSCORE", "sb:{sb}:redeliver", "-inf", "(0")
    return [(m.decode() if isinstance(m, bytes) else m)[len("!scheduler:"):] for m in members]


@pytest.fixture
def own_redis(workdir):
    """A Redis of the test's own: no other switchboard may hold the scheduler lease."""
    r = RedisServer(os.path.join(workdir, "redis-%d" % free_port()))
    r.start()
    try:
        yield r
    finally:
        r.stop()


def test_two_instances_each_message_once_and_the_lease_moves(own_redis, make_sb, workdir):
    redis = own_redis
    a = make_sb(name="sbA", redis_url=redis.url)
    b = make_sb(name="sbB", redis_url=redis.url)
    ws = unique_ws()
    port = free_port()
    ag = fixed_agent(workdir, port)
    try:
        assert register(a, ws, ag.url("/a2a")).status == 200
        ag.stop()
        mids = []
        for i in range(8):
            mids += queue(a if i % 2 == 0 else b, ws, 1, prefix="two%d" % i)
        ag = fixed_agent(workdir, port)
        deadline = time.time() + 10
        while time.time() < deadline and len(ag.posts()) < 8:
            time.sleep(0.05)
        time.sleep(1.0)  # anything pushed twice would arrive by now
        got = received(ag)
        assert sorted(got) == sorted(mids) and len(got) == 8, "each message exactly once"
        assert got == mids, "and in order"

        # one scheduler; kill -9 it (the lease is not given back) and the other takes over
        holders = []
        deadline = time.time() + 5
        while time.time() < deadline and len(holders) != 1:
            holders = leader_of(redis)
            time.sleep(0.1)
        assert len(holders) == 1, holders
        holder, other = (a, b) if holders[0] in a.log_text() else (b, a)
        assert holders[0] in holder.log_text() and holders[0] not in other.log_text()
        holder.kill()
        deadline = time.time() + 8
        now_held = holders
        while time.time() < deadline and now_held == holders:
            now_held = leader_of(redis) or holders
            time.sleep(0.1)
        assert len(now_held) == 1 and now_held[0] != holders[0], (holders, now_held)
        assert now_held[0] in other.log_text()
        # and the survivor's schedule redelivers
        ag.stop()
        late = queue(other, ws, 1, prefix="late")
        ag = fixed_agent(workdir, port)
        deadline = time.time() + 8
        while time.time() < deadline and late[0] not in received(ag):
            time.sleep(0.1)
        assert late[0] in received(ag)
    finally:
        ag.stop()


MAKE_ENDPOINTS = """
for i = 1, tonumber(ARGV[2]) do
  local ws = ARGV[1] .. i
  redis.call('HSET', 'sb:{' .. ws .. '}:endpoint', 'config', cjson.encode({
    workspace_id = ws, url = ARGV[3], delivery_mode = 'push', protocol = 'auto',
    lease_s = 0, max_concurrency = 0, registered_at_ms = 1}),
    'secret', 'sbs_' .. i, 'lease_s', '0', 'lease_expires_at_ms', '0', 'active_tasks', '0',
    'heartbeat_at_ms', '0')
  redis.call('SADD', 'sb:endpoints', ws)
end
return 1
"""


def commandstats(c):
    text = c.call("INFO", "commandstats")
    text = text.decode() if isinstance(text, bytes) else text
    calls = {}
    for line in text.splitlines():
        if line.startswith("cmdstat_"):
            name, rest = line[len("cmdstat_"):].split(":", 1)
            fields = dict(kv.split("=") for kv in rest.split(","))
            calls[name] = int(fields["calls"])
    return calls


def test_idle_workspaces_cost_no_redis_commands(own_redis, make_sb, agent):
    """10,000 registered push workspaces with nothing queued, on their own Redis and
    switchboard: over 10 s Redis sees only the constant background (announce, gauges,
    the scheduler's lease and scans), nothing that grows with the workspaces."""
    r = own_redis
    ag = agent("ok")
    with r.client() as c:
        c.call("EVAL", MAKE_ENDPOINTS, "0", "idle-", "10000", ag.url("/a2a"))
    inst = make_sb(redis_url=r.url, name="idle")
    assert request(inst, "GET", "/registry/idle-9999", token=inst.admin_token).status == 200
    with r.client() as c:
        c.call("CONFIG", "RESETSTAT")
        time.sleep(10)
        calls = commandstats(c)
    total = sum(v for k, v in calls.items() if k not in ("info", "config|resetstat",
                                                         "config"))
    # the background is a few commands a second whatever the number of workspaces
    assert total < 200, calls
    print("idle: %d Redis commands in 10 s with 10,000 workspaces: %s" % (total, calls))


def _drain_with_live_sends(sb, agent, ordered):
    """4 messages wait (poll mode); the workspace registers push (ordered or not) with a
    slow agent, so the register's redelivery takes a while; meanwhile 4 more are sent,
    one after another. Returns (the send order, the order the agent saw, the reasons the
    live sends got)."""
    ws = unique_ws()
    ag = agent("slow:0.3")
    assert register(sb, ws, delivery_mode="poll").status == 200
    sent = queue(sb, ws, 4, prefix="old")
    r = request(sb, "POST", "/registry/register", token=sb.admin_token,
                body={"workspace_id": ws, "url": ag.url("/a2a"), "ordered": ordered})
    assert r.status == 200, r
    ag.wait_posts(1, timeout=5)  # the redelivery is under way
    reasons = []
    for i in range(4):
        body = send_v03(text="live %d" % i)
        rr = a2a(sb, ws, body, timeout=10)
        assert rr.status == 200, rr
        reasons.append(rr.header("X-Delivery-Reason"))
        sent.append(mid(body))
    deadline = time.time() + 10
    while time.time() < deadline and len(ag.posts()) < 8:
        time.sleep(0.05)
    return sent, received(ag), reasons


def test_ordered_keeps_order_under_concurrent_sends(sb, agent):
    sent, got, reasons = _drain_with_live_sends(sb, agent, True)
    assert reasons[0] == "backlog", reasons
    assert got == sent, "an ordered workspace sees every message in the order it was sent"


def test_unordered_live_message_overtakes_the_backlog(sb, agent):
    """The reverse: without ordered a live message is pushed at once, ahead of the
    backlog still being redelivered (documented, SPEC §4.1)."""
    sent, got, reasons = _drain_with_live_sends(sb, agent, False)
    assert sorted(got) == sorted(sent)
    assert reasons[0] is None, reasons  # pushed, not queued
    assert got != sent, "a live message overtook the backlog"
    assert got.index(sent[4]) < got.index(sent[3]), got


def test_ordered_flag_is_validated_and_shown(sb, agent):
    ws = unique_ws()
    ag = agent("ok")
    r = request(sb, "POST", "/registry/register", token=sb.admin_token,
                body={"workspace_id": ws, "url": ag.url("/a2a"), "ordered": "yes"})
    assert r.status == 400 and r.json()["error"]["code"] == "invalid_request", r
    assert register(sb, ws, ag.url("/a2a"), ordered=True).status == 200
    assert request(sb, "GET", "/registry/%s" % ws, token=sb.admin_token).json()["ordered"] is True
    assert register(sb, ws, ag.url("/a2a")).status == 200
    assert request(sb, "GET", "/registry/%s" % ws, token=sb.admin_token).json()["ordered"] is False


def test_stalled_workspaces_gauge(sb, redis):
    """A push-mode workspace whose oldest queued message is older than 5 minutes counts
    as stalled (the message's enqueue time is moved back in Redis to get there fast)."""
    ws = unique_ws()
    port = free_port()  # nothing listens: the message stays queued
    assert register(sb, ws, "http://127.0.0.1:%d/" % port).status == 200
    body = send_v03()
    r = a2a(sb, ws, body)
    assert r.status == 200 and r.header("X-Delivery-Mode") == "poll", r
    qid = "q_" + r.json()["result"]["id"][len("sbtask_"):]
    with redis.client() as c:
        c.call("HSET", "sb:{%s}:msg:%s" % (ws, qid), "enqueued_at_ms",
               str(int(time.time() * 1000) - 600 * 1000))
    deadline = time.time() + 12  # the gauges refresh every 5 s
    value = 0
    while time.time() < deadline and value < 1:
        _, e = scrape(sb)
        value = e.value("switchboard_stalled_workspaces")
        time.sleep(0.3)
    assert value >= 1


def test_agent_back_mid_backoff_gets_backlog_within_seconds(sb, workdir):
    """The back-off has grown (the third retry failed, the next is ~8 s away), yet an
    agent that comes back gets its message within ~2 s: between retries switchboard
    watches an unreachable agent's card, and its first answer starts the redelivery."""
    ws = unique_ws()
    port = free_port()
    ag = fixed_agent(workdir, port)
    try:
        assert register(sb, ws, ag.url("/a2a")).status == 200
        ag.stop()
        mids = queue(sb, ws, 1, prefix="mid-backoff")
        deadline = time.time() + 15
        count = 0
        while time.time() < deadline and count < 3:
            failed = drained(record(sb, ws, mids[0]), "failed")
            count = failed[0].get("count", 1) if failed else 0
            time.sleep(0.1)
        assert count >= 3, "three failed retries, collapsed into one attempt"
        back = time.time()
        ag = fixed_agent(workdir, port)
        while time.time() < back + 6 and not ag.posts():
            time.sleep(0.05)
        assert received(ag) == mids
        assert ag.posts()[0]["time"] - back < 4.0, "within seconds, not at the next retry"
    finally:
        ag.stop()
