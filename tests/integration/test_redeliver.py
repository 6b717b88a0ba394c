"""Redelivery by switchboard itself (SPEC §4.4): a push-mode agent that comes back gets
its backlog without registering or heartbeating again — oldest first, each message
acked, the retries on a schedule (first about 1 s after the fallback, then doubling),
one instance driving a workspace at a time, the scheduler's lease moving when its holder
dies, and identical failures collapsed into one attempt of the delivery record. A large
backlog drains with several pushes in flight (never past the capacity), each message
exactly once; `ordered` keeps one at a time in order; an agent that breaks mid-way stops
the drain with the rest still queued."""

import os
import re
import time

import pytest

from harness import (FakeAgent, a2a, free_port, inbox_peek, register, request,
                     send_v03, unique_ws)
from promtext import scrape


class PortAgent:
    """A fake agent on one fixed port, stopped and started again by the test (the
    registered URL stays the same); whatever runs at the end is stopped."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.port = free_port()
        self.ag = None

    def url(self, path="/a2a"):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def up(self, mode="ok"):
        self.down()
        self.ag = FakeAgent(os.path.join(self.workdir, "agents"), mode, port=self.port)
        os.makedirs(self.ag.workdir, exist_ok=True)
        return self.ag.start()

    def down(self):
        if self.ag is not None:
            self.ag.stop()
            self.ag = None


@pytest.fixture
def port_agent(workdir):
    pa = PortAgent(workdir)
    try:
        yield pa
    finally:
        pa.down()


def backlog_while_down(senders, pa, n, prefix="m"):
    """A new workspace registered at |pa|'s URL (the agent up for the registration's
    probe), then the agent down and |n| messages queued, sent through |senders| in turn.
    Returns (workspace, messageIds in sending order)."""
    ws = unique_ws()
    pa.up()
    assert register(senders[0], ws, pa.url()).status == 200
    pa.down()
    mids = []
    for i in range(n):
        mids += queue(senders[i % len(senders)], ws, 1, prefix="%s%d" % (prefix, i))
    return ws, mids


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


def test_agent_back_without_heartbeat_gets_backlog(sb, port_agent):
    ws, mids = backlog_while_down([sb], port_agent, 3)
    back = time.time()
    ag = port_agent.up()  # same port, no register, no heartbeat
    deadline = back + 5.0
    while time.time() < deadline and len(ag.posts()) < 3:
        time.sleep(0.05)
    got = received(ag)
    assert sorted(got) == sorted(mids) and len(got) == 3, "all 3 within 5 s of the return"
    assert got[0] == mids[0], "the oldest first (alone: it may be the circuit's probe)"
    recs = wait_states(sb, ws, mids, "acked", 3.0)
    for rec in recs:
        assert rec["state"] == "acked", rec
        assert len(drained(rec, "delivered")) == 1, rec["attempts"]
        kinds = [a["outcome"] for a in rec["attempts"]]
        assert "leased" not in kinds and "nacked" not in kinds, kinds


def test_5xx_agent_that_recovers(sb, port_agent):
    ws = unique_ws()
    ag = port_agent.up("status:503")
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
    ag = port_agent.up()
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


def test_successful_push_starts_redelivery(sb, redis, port_agent):
    """A live push that is delivered while a backlog waits starts the redelivery at once,
    long before its scheduled retry (here pushed a minute away)."""
    ws = unique_ws()
    ag = port_agent.up("status:503")
    assert register(sb, ws, ag.url("/a2a")).status == 200
    mids = queue(sb, ws, 1, prefix="waiting")
    with redis.client() as c:  # a long back-off in force
        c.call("ZADD", "sb:{sb}:redeliver", str(int(time.time() * 1000) + 60000), ws)
    ag = port_agent.up()
    live = send_v03(text="live")
    r = a2a(sb, ws, live)
    assert r.status == 200 and r.header("X-Delivery-Mode") == "push", r
    deadline = time.time() + 3
    while time.time() < deadline and len(ag.posts()) < 2:
        time.sleep(0.05)
    assert received(ag) == [mid(live)] + mids, "the backlog follows the live push"


def leader_of(redis):
    with redis.client() as c:
        members = c.call("ZRANGEBYSCORE", "sb:{sb}:redeliver", "-inf", "(0")
    return [(m.decode() if isinstance(m, bytes) else m)[len("!scheduler:"):] for m in members]


def test_two_instances_each_message_once_and_the_lease_moves(own_redis, make_sb, port_agent):
    redis = own_redis
    a = make_sb(name="sbA", redis_url=redis.url)
    b = make_sb(name="sbB", redis_url=redis.url)
    ws, mids = backlog_while_down([a, b], port_agent, 8, prefix="two")
    ag = port_agent.up()
    deadline = time.time() + 10
    while time.time() < deadline and len(ag.posts()) < 8:
        time.sleep(0.05)
    time.sleep(1.0)  # anything pushed twice would arrive by now
    got = received(ag)
    assert sorted(got) == sorted(mids) and len(got) == 8, "each message exactly once"
    assert got[0] == mids[0], "the oldest first"

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
    port_agent.down()
    late = queue(other, ws, 1, prefix="late")
    ag = port_agent.up()
    deadline = time.time() + 8
    while time.time() < deadline and late[0] not in received(ag):
        time.sleep(0.1)
    assert late[0] in received(ag)


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


def test_agent_back_mid_backoff_gets_backlog_within_seconds(sb, port_agent):
    """The back-off has grown (the third retry failed, the next is ~8 s away), yet an
    agent that comes back gets its message within ~2 s: between retries switchboard
    watches an unreachable agent's card, and its first answer starts the redelivery."""
    ws, mids = backlog_while_down([sb], port_agent, 1, prefix="mid-backoff")
    deadline = time.time() + 15
    count = 0
    while time.time() < deadline and count < 3:
        failed = drained(record(sb, ws, mids[0]), "failed")
        count = failed[0].get("count", 1) if failed else 0
        time.sleep(0.1)
    assert count >= 3, "three failed retries, collapsed into one attempt"
    back = time.time()
    ag = port_agent.up()
    while time.time() < back + 6 and not ag.posts():
        time.sleep(0.05)
    assert received(ag) == mids
    assert ag.posts()[0]["time"] - back < 4.0, "within seconds, not at the next retry"


# ---- drain concurrency ----

def backlog_in_poll_mode(sb, n, prefix):
    """A new workspace in poll mode with |n| queued messages: (workspace, messageIds)."""
    ws = unique_ws()
    assert register(sb, ws, delivery_mode="poll").status == 200
    return ws, queue(sb, ws, n, prefix=prefix)


def wait_posts(ag, n, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline and len(ag.posts()) < n:
        time.sleep(0.1)
    return ag.posts()


def wait_drained_count(inst, before, n, timeout, step=0.2):
    """Scrapes |inst| until switchboard_drained_total has risen by |n| since the scrape
    |before| or |timeout| s have passed. Returns the last scrape and the most
    switchboard_drain_buffered_bytes it saw meanwhile."""
    deadline = time.time() + timeout
    held = 0
    while True:
        _, after = scrape(inst)
        held = max(held, after.get("switchboard_drain_buffered_bytes", 0))
        done = after.get("switchboard_drained_total", 0) - before.get("switchboard_drained_total", 0)
        if done >= n or time.time() > deadline:
            return after, held
        time.sleep(step)


def wait_drained(sb, ws, timeout):
    """The workspace's peek once nothing is leased (a drain has settled what it took)."""
    deadline = time.time() + timeout
    while True:
        p = inbox_peek(sb, ws, max=100).json()
        if p["leased"] == 0 or time.time() >= deadline:
            return p
        time.sleep(0.1)


def test_large_backlog_drains_with_several_in_flight_exactly_once(sb, agent):
    """300 messages wait; the agent (50 ms per answer) comes up: the drain keeps several
    pushes in flight (growing from one), never more than the default capacity's share
    (64 − a quarter left to live pushes = 48), and every message arrives once and is
    acked."""
    n = 300
    ws, mids = backlog_in_poll_mode(sb, n, "big")
    ag = agent("slow:0.05")
    assert register(sb, ws, ag.url("/a2a")).status == 200
    posts = wait_posts(ag, n, 60)
    time.sleep(1.0)  # anything pushed twice would arrive by now
    posts = ag.posts()
    got = [FakeAgent.header(p, "X-Switchboard-Message-Id") for p in posts]
    assert len(got) == n and sorted(got) == sorted(mids), "each message exactly once"
    assert got[0] == mids[0], "the oldest first"
    most = max(p["inflight"] for p in posts)
    assert 4 <= most <= 48, "several pushes at once, within the capacity: %d" % most
    p = wait_drained(sb, ws, 10)
    assert p["ready"] == 0 and p["leased"] == 0, p
    for m in mids[:3] + mids[-3:]:
        rec = record(sb, ws, m)
        assert rec["state"] == "acked", rec
        assert len(drained(rec, "delivered")) == 1, rec["attempts"]
    v = request(sb, "GET", "/workspaces/%s/delivery" % ws, token=sb.admin_token).json()
    assert v["queue"]["depth"] == 0 and v["queue"]["dead_letters"] == 0, v["queue"]


def test_drain_keeps_its_share_of_the_capacity_full_and_each_message_once(
        own_redis, make_sb, agent):
    """--max-inflight-per-endpoint 8: the drain's share is 6 (a quarter stays for live
    pushes). 150 messages, an agent taking 80 ms each: once the window has opened the
    agent sees 6 at a time nearly all along and never 7, and the run's closing log line
    reports its share and average; each message arrives once, is acked, and
    switchboard_drained_total rises by exactly 150 (a Redis and an instance of its own, so
    no other workspace's retry is counted). What this checks is the drain's contract with
    a read-ahead in place (share kept, never passed, each message once); an 80 ms agent is
    slower than any lease, so the old fixed read-ahead passed it too — the rule that sizes
    the read-ahead to the lease's round trip is tests/unit/test_drain.c's."""
    n, cap = 150, 6
    inst = make_sb(["--max-inflight-per-endpoint", "8"], redis_url=own_redis.url,
                   name="sb-drain-cap")
    ws, mids = backlog_in_poll_mode(inst, n, "cap6")
    _, before = scrape(inst)
    ag = agent("slow:0.08")
    assert register(inst, ws, ag.url("/a2a")).status == 200
    posts = wait_posts(ag, n, 60)
    p = wait_drained(inst, ws, 10)
    assert p["ready"] == 0 and p["leased"] == 0, p
    wait_drained_count(inst, before, n, 10, step=0.1)
    time.sleep(0.5)  # anything pushed twice would arrive by now
    posts = ag.posts()
    got = [FakeAgent.header(p, "X-Switchboard-Message-Id") for p in posts]
    assert len(got) == n and sorted(got) == sorted(mids), "each message exactly once"
    _, after = scrape(inst)
    assert after.get("switchboard_drained_total", 0) - before.get(
        "switchboard_drained_total", 0) == n
    seen = [q["inflight"] for q in posts]
    assert max(seen) == cap, "the drain's share reached, never passed: %d" % max(seen)
    # after the window has opened (the first 20) and before the tail (the last cap):
    steady = seen[20:-cap]
    full = sum(1 for x in steady if x >= cap - 1)
    assert full >= 0.8 * len(steady), "slots left free: %s" % steady
    # the run's closing log line tells the same: its share, and near it on average (over
    # the whole run: the ramp, the tail and the empty lease at the end included)
    lines = inst.wait_log(lambda o: o.get("event") == "drain" and ws in o.get("msg", "") and
                          "pushes in flight" in o.get("msg", ""), timeout=10)
    assert lines, "the drain's closing line"
    m = re.search(r"(\d+) message\(s\) redelivered.*pushes in flight ([0-9.]+) on average "
                  r"of a share of (\d+); lease round trip ([0-9.]+) ms", lines[-1]["msg"])
    assert m, lines[-1]
    assert int(m.group(1)) == n and int(m.group(3)) == cap, lines[-1]
    assert cap * 0.6 <= float(m.group(2)) <= cap, lines[-1]


def test_slow_agent_gets_each_buffered_message_once(own_redis, make_sb, agent):
    """A slow agent and a backlog the drain buffers: --push-timeout-s 8, connect timeout
    150 ms, the agent taking 7 s for each of its first 7 messages (then answering at once),
    max_concurrency 2 (a window of two, a window and a half leased ahead). The second
    lease (5 messages, once the first push is answered) holds its last message two rounds
    (14 s) before its push: with one lease length for all (push bound + 5 s = 13.15 s) that
    lease ended while the message waited, the next lease's maintenance put it back at the
    front of ready, and the drain leased and pushed it a second time (the agent got it
    twice, switchboard_drained_total rose by 10). A lease sized to the rounds ahead covers
    it: all 9 arrive exactly once, and switchboard_drained_total rises by exactly 9."""
    n = 9
    inst = make_sb(["--push-timeout-s", "8", "--connect-timeout-ms", "150"],
                   redis_url=own_redis.url, name="sb-drain-slow")
    ws, mids = backlog_in_poll_mode(inst, n, "slowlease")
    _, before = scrape(inst)
    ag = agent("slow:7", "--slow-first", "7")
    assert register(inst, ws, ag.url("/a2a"), max_concurrency=2).status == 200
    wait_drained_count(inst, before, n, 45)
    p = wait_drained(inst, ws, 10)
    time.sleep(1.0)  # anything pushed twice would arrive by now
    got = received(ag)
    twice = sorted(m for m in set(got) if got.count(m) > 1)
    assert not twice, "pushed more than once: %s (%d pushes)" % (twice, len(got))
    assert sorted(got) == sorted(mids), "each message exactly once"
    assert p["ready"] == 0 and p["leased"] == 0, p
    _, after = scrape(inst)
    assert after.get("switchboard_drained_total", 0) - before.get(
        "switchboard_drained_total", 0) == n
    assert max(q["inflight"] for q in ag.posts()) <= 2


def test_buffered_message_on_a_short_lease_is_released_not_pushed(own_redis, make_sb, agent):
    """An agent that slows down after a lease: --push-timeout-s 8 (a push bound of 8.15 s
    with a 150 ms connect timeout), max_concurrency 2; the first push is answered at once,
    so the window opens to two and the next lease takes 5 messages for rounds at that pace
    (8.15 s + 5 s and a little). The next two take 5 s each: the window closes to one, and
    when the third message's turn comes its lease has ~8.3 s left, less than a push bound +
    2 s. It is not pushed on it: the three buffered messages are released for a fresh lease
    (a `drain_lease_short` warning each), leased again and pushed. Each message reaches the
    agent exactly once, the run counts no failure, switchboard_drained_total rises by
    exactly 6, a released message's record holds its one delivered attempt and nothing
    for the release, and switchboard_drain_buffered_bytes showed the waiting requests and
    is back at 0."""
    n = 6
    inst = make_sb(["--push-timeout-s", "8", "--connect-timeout-ms", "150"],
                   redis_url=own_redis.url, name="sb-drain-short")
    ws, mids = backlog_in_poll_mode(inst, n, "shortlease")
    _, before = scrape(inst)
    ag = agent("slow:5", "--fast-first", "1", "--slow-first", "3")
    assert register(inst, ws, ag.url("/a2a"), max_concurrency=2).status == 200
    # held: the most switchboard_drain_buffered_bytes showed while messages waited
    _, held = wait_drained_count(inst, before, n, 30)
    p = wait_drained(inst, ws, 10)
    time.sleep(1.0)  # anything pushed twice would arrive by now
    got = received(ag)
    assert sorted(got) == sorted(mids), "each message exactly once: %s" % got
    # the first three before any release (two of them pushed at once: either order)
    assert sorted(got[:3]) == sorted(mids[:3]), got
    assert p["ready"] == 0 and p["leased"] == 0, p
    _, after = scrape(inst)
    assert after.get("switchboard_drained_total", 0) - before.get(
        "switchboard_drained_total", 0) == n
    assert after.value("switchboard_redeliveries_total", outcome="failed") == \
        before.value("switchboard_redeliveries_total", outcome="failed")
    # the buffered requests were counted while they waited, and every byte came off again
    # whether the message was pushed or released
    assert held > 0, "switchboard_drain_buffered_bytes never showed the waiting messages"
    assert before.get("switchboard_drain_buffered_bytes", 0) == 0
    assert after.get("switchboard_drain_buffered_bytes", -1) == 0, after
    short = inst.wait_log(lambda o: o.get("event") == "drain_lease_short" and
                          ws in o.get("msg", ""), timeout=5)
    assert short, "the release is logged"
    assert all("released for a fresh lease" in o["msg"] for o in short), short
    assert len(short) == 3, short
    lines = inst.wait_log(lambda o: o.get("event") == "drain" and ws in o.get("msg", "") and
                          "redelivered" in o.get("msg", ""), timeout=10)
    assert lines and all(" 0 failed" in o["msg"] for o in lines), lines
    for m in mids[3:]:
        rec = record(inst, ws, m)
        assert rec["state"] == "acked", rec
        assert len(rec["attempts"]) == 1 and len(drained(rec, "delivered")) == 1, rec["attempts"]


def test_ordered_drain_is_one_at_a_time_in_order(sb, agent):
    ws, mids = backlog_in_poll_mode(sb, 12, "ord")
    ag = agent("slow:0.05")
    r = request(sb, "POST", "/registry/register", token=sb.admin_token,
                body={"workspace_id": ws, "url": ag.url("/a2a"), "ordered": True})
    assert r.status == 200, r
    posts = wait_posts(ag, 12, 20)
    assert received(ag) == mids, "strictly in order"
    assert max(p["inflight"] for p in posts) == 1, "one at a time"


def test_agent_failing_mid_drain_stops_it_and_the_rest_stay_queued(sb, agent):
    """The agent answers 20 pushes, then 500: the drain stops leasing at the first
    failure, lets the pushes in flight end, and gives back what it did not deliver:
    exactly the 20 answered are acked, the rest stay queued in order with their own
    reason and no delivery counted; the pushes that failed show http_5xx."""
    n = 80
    ws, mids = backlog_in_poll_mode(sb, n, "brk")
    ag = agent("slow:0.02", "--fail-after", "20")
    assert register(sb, ws, ag.url("/a2a")).status == 200
    line = sb.wait_log(lambda o: o.get("event") == "drain" and ws in o.get("msg", "") and
                       "http_5xx" in o.get("msg", ""), timeout=20)
    assert line, "the run stopped at the failure"
    posts = ag.posts()
    ok = [FakeAgent.header(p, "X-Switchboard-Message-Id") for p in posts
          if p["response_status"] == 200]
    failed = [FakeAgent.header(p, "X-Switchboard-Message-Id") for p in posts
              if p["response_status"] == 500]
    assert len(ok) == 20 and failed, (len(ok), len(failed))
    assert len(posts) < n, "stopped leasing at the first failure: %d pushes" % len(posts)
    p = wait_drained(sb, ws, 10)
    assert p["leased"] == 0, p
    queued = [m["message_id"] for m in p["messages"]]
    assert queued == [m for m in mids if m not in ok], "the rest, still in order"
    for m in p["messages"]:
        assert m["reason"] == "poll_mode" and m["delivery_count"] == 0, m
    for m in failed[:3]:
        rec = record(sb, ws, m)
        assert rec["state"] == "queued", rec
        f = drained(rec, "failed")
        assert len(f) == 1 and f[0]["reason"] == "http_5xx", rec["attempts"]
    for m in ok[:3]:
        assert record(sb, ws, m)["state"] == "acked"
    v = request(sb, "GET", "/workspaces/%s/delivery" % ws, token=sb.admin_token).json()
    assert v["queue"]["redelivery"]["last_outcome"] == "http_5xx", v["queue"]


def test_drain_leaves_live_pushes_a_quarter_of_the_capacity(sb, agent):
    """max_concurrency 4: the drain keeps at most 3 in flight, so a live message sent
    while it runs is pushed, not refused busy; the agent never sees more than 4."""
    ws = unique_ws()
    assert register(sb, ws, delivery_mode="poll").status == 200
    mids = queue(sb, ws, 24, prefix="cap")
    ag = agent("slow:0.3")
    assert register(sb, ws, ag.url("/a2a"), max_concurrency=4).status == 200
    deadline = time.time() + 10
    while time.time() < deadline and max([p["inflight"] for p in ag.posts()] or [0]) < 3:
        time.sleep(0.05)
    live = send_v03(text="live")
    r = a2a(sb, ws, live, timeout=10)
    assert r.status == 200 and r.header("X-Delivery-Mode") == "push", \
        (r.header("X-Delivery-Reason"), r)
    posts = wait_posts(ag, 25, 20)
    assert sorted(received(ag)) == sorted(mids + [mid(live)])
    drain_most = max(p["inflight"] for p in posts if FakeAgent.header(
        p, "X-Switchboard-Message-Id") != mid(live))
    assert max(p["inflight"] for p in posts) <= 4 and drain_most >= 3, posts


def test_heartbeat_with_the_circuit_open_drains_at_once(sb, port_agent):
    """The agent was down long enough to open the circuit; it comes back and heartbeats:
    the redelivery starts within a round trip or two (the heartbeat's drain looks at the
    agent's card at once), not at the card watch's next tick or the next retry."""
    ws, mids = backlog_while_down([sb], port_agent, 6, prefix="hb")
    c = request(sb, "GET", "/workspaces/%s/delivery" % ws, token=sb.admin_token).json()
    assert c["circuit"]["state"] in ("open", "half_open"), c["circuit"]
    ag = port_agent.up()
    t0 = time.time()
    assert request(sb, "POST", "/registry/heartbeat", token=sb.admin_token,
                   body={"workspace_id": ws}).status == 200
    posts = wait_posts(ag, 6, 10)
    assert sorted(received(ag)) == sorted(mids)
    assert posts[0]["time"] - t0 < 1.0, "started %.2f s after the heartbeat" % (
        posts[0]["time"] - t0)


def test_agent_working_one_at_a_time_gets_few_pushes_at_once(sb, agent):
    """An agent that answers one message at a time (0.2 s each): the window widens only
    while pushes answer about as fast as the quickest did, so the drain keeps one or two
    waiting at the agent instead of piling up dozens whose last would wait for all."""
    n = 12
    ws, mids = backlog_in_poll_mode(sb, n, "ser")
    ag = agent("slow:0.2", "--serial")
    assert register(sb, ws, ag.url("/a2a")).status == 200
    posts = wait_posts(ag, n, 30)
    assert sorted(received(ag)) == sorted(mids)
    most = max(p["inflight"] for p in posts)
    assert most <= 3, "pushes waiting at a serial agent: %d" % most
