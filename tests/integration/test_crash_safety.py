"""test_crash_safety.py — nothing accepted is lost when switchboard or Redis fails.

Each test here breaks a real process on purpose and then audits the outcome against what
the callers were told, message by message:

  - switchboard killed with SIGKILL under 16-way keep-alive load (a pushing and a
    falling-back workspace), restarted on the same port: every message answered 200 is
    in the agent's request record (push) or leasable from the queue (poll); 0 lost;
  - Redis (AOF, appendfsync always) killed with SIGKILL and restarted under the same
    load: callers get 200 or 503 + Retry-After and nothing else; every 200 survives;
  - a hung Redis (DEBUG SLEEP past --redis-command-timeout-ms): the 503 says the message
    may have been queued, and the retry with the same messageId returns its one task;
  - an instance that has not loaded its registry replica answers 503 + Retry-After,
    never a fallback with a reason it cannot know, then serves once ready;
  - a push delivered while Redis is unreachable gets its delivery record once Redis is
    back.

Every test owns its redis-server (it is paused, killed or put to sleep), so they do not
disturb the module-scoped instances other test files share. Load is bounded in threads
(16), messages and time, and every wait polls with a deadline.
"""

import http.client
import json
import os
import signal
import threading
import time
import uuid

import pytest

import harness
from harness import (LOOPBACK, RedisServer, Switchboard, a2a, inbox_lease, mint, register,
                     request, send_v03, unique_ws)

LOAD_THREADS = 16


# --------------------------------------------------------------------------------------
# helpers

@pytest.fixture
def make_redis(workdir):
    """A factory of redis-servers owned by one test, all killed after it."""
    servers = []

    def make(extra_args=(), port=None, subdir=None):
        d = os.path.join(workdir, subdir or ("redis-" + uuid.uuid4().hex[:6]))
        r = RedisServer(d, port=port, extra_args=extra_args)
        servers.append(r)
        return r.start()

    try:
        yield make
    finally:
        for r in servers:
            r.stop()


@pytest.fixture
def own_sb(workdir):
    """A factory of switchboards owned by one test: stopped (SIGTERM, exit 0 expected
    unless |killed| was set by the test) and killed after it."""
    made = []

    def make(redis_url, extra_args=(), port=None, ready=True, admin_token=None):
        inst = Switchboard(os.path.join(workdir, "sb"), redis_url, extra_args=extra_args,
                           admin_token=admin_token, name="crash")
        made.append(inst)
        return inst.start(port=port, ready=ready)

    try:
        yield make
    finally:
        errors = []
        for inst in made:
            try:
                if inst.alive():
                    inst.stop()
            except AssertionError as e:
                errors.append(str(e))
            finally:
                inst.kill()
        if errors:
            raise AssertionError("\n\n".join(errors))


def wait_for(pred, timeout, what, interval=0.05):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = pred()
            if last:
                return last
        except (OSError, http.client.HTTPException) as e:
            last = e
        time.sleep(interval)
    raise AssertionError("timed out after %.1fs waiting for %s (last: %r)" % (timeout, what, last))


def readyz(sb):
    try:
        return request(sb, "GET", "/readyz", timeout=2.0).status
    except OSError:
        return None


class Load:
    """|threads| callers, each on one keep-alive HTTP/1.1 connection to |port|, sending
    message/send to the workspaces in turn until stop() or |max_s|. Every answer (or
    failure) is kept: (message_id, ws, status, headers, body, t)."""

    def __init__(self, port, token, workspaces, threads=LOAD_THREADS, max_s=30.0,
                 max_per_thread=2000):
        self.port = port
        self.token = token
        self.workspaces = workspaces
        self.threads = threads
        self.max_s = max_s
        self.max_per_thread = max_per_thread
        self.results = []
        self.errors = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.workers = []

    def _run(self, n):
        conn = None
        deadline = time.time() + self.max_s
        sent = 0
        while not self.stopping.is_set() and time.time() < deadline and \
                sent < self.max_per_thread:
            ws = self.workspaces[(n + sent) % len(self.workspaces)]
            mid = "m-%d-%d-%s" % (n, sent, uuid.uuid4().hex[:8])
            body = json.dumps(send_v03(mid, text="load %d" % sent)).encode()
            sent += 1
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=10)
                conn.request("POST", "/workspaces/%s/a2a" % ws, body=body,
                             headers={"Authorization": "Bearer " + self.token,
                                      "Content-Type": "application/json"})
                r = conn.getresponse()
                data = r.read()
                hdrs = {k.lower(): v for k, v in r.getheaders()}
                with self.lock:
                    self.results.append((mid, ws, r.status, hdrs, data, time.time()))
                if hdrs.get("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                with self.lock:
                    self.errors += 1
                    self.results.append((mid, ws, None, {}, b"", time.time()))
                if conn is not None:
                    conn.close()
                    conn = None
                time.sleep(0.02)
        if conn is not None:
            conn.close()

    def start(self):
        for n in range(self.threads):
            t = threading.Thread(target=self._run, args=(n,), daemon=True)
            t.start()
            self.workers.append(t)
        return self

    def stop(self):
        self.stopping.set()
        for t in self.workers:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in self.workers), "load threads did not stop"

    def count(self, pred=lambda r: True):
        with self.lock:
            return sum(1 for r in self.results if pred(r))

    def wait_count(self, n, pred, timeout, what):
        return wait_for(lambda: self.count(pred) >= n, timeout, what, interval=0.02)


def ok_since(t0):
    return lambda r: r[2] == 200 and r[5] >= t0


def lease_all(sb, ws, rounds=200):
    """Every message id leasable from |ws|'s queue (leases up to 100 at a time)."""
    ids = set()
    for _ in range(rounds):
        r = inbox_lease(sb, ws, max=100, lease_s=300)
        assert r.status == 200, r
        msgs = r.json()["messages"]
        if not msgs:
            break
        ids.update(m["message_id"] for m in msgs)
    return ids


def pushed_ids(agent):
    return {harness.FakeAgent.header(p, "X-Switchboard-Message-Id") for p in agent.posts()}


def audit(load, sb, agent, push_ws, poll_ws):
    """Every 200 is in the agent's record (push) or leasable (poll): returns the counts."""
    oks = [r for r in load.results if r[2] == 200]
    seen_by_agent = pushed_ids(agent)
    queued = {ws: lease_all(sb, ws) for ws in (push_ws, poll_ws)}
    lost = []
    modes = {"push": 0, "poll": 0}
    for mid, ws, status, hdrs, body, _ in oks:
        mode = hdrs.get("x-delivery-mode")
        assert mode in modes, "a 200 without X-Delivery-Mode: %r %r" % (hdrs, body[:200])
        modes[mode] += 1
        if mode == "push" and mid not in seen_by_agent:
            lost.append((mid, ws, "push"))
        if mode == "poll" and mid not in queued[ws]:
            lost.append((mid, ws, "poll"))
    assert not lost, "%d of %d messages answered 200 are lost, e.g. %r" % (
        len(lost), len(oks), lost[:5])
    return modes


def register_pair(sb, agent):
    push_ws, poll_ws = unique_ws("push"), unique_ws("poll")
    assert register(sb, push_ws, url=agent.url()).status == 200
    assert register(sb, poll_ws, delivery_mode="poll").status == 200
    return push_ws, poll_ws


# --------------------------------------------------------------------------------------
# SPEC §1: not ready means 503

def test_not_ready_answers_503_then_serves(make_redis, own_sb, agent):
    redis = make_redis()
    ok = agent("ok")
    first = own_sb(redis.url)
    ws = unique_ws("nr")
    tok = mint(first, ws)["token"]
    assert register(first, ws, url=ok.url()).status == 200
    first.stop()

    # Writes (and so the snapshot script) wait while Redis is paused for writes; PING and
    # SUBSCRIBE still work, so the new instance starts but cannot load its replicas.
    with redis.client() as c:
        c.call("CLIENT", "PAUSE", "4000", "WRITE")
    paused_at = time.time()
    sb = own_sb(redis.url, ready=False)
    assert readyz(sb) == 503
    answers = []
    for token in (sb.admin_token, tok):
        body = send_v03()
        r = a2a(sb, ws, body, token=token)
        answers.append(r)
    if time.time() - paused_at > 3.5:
        pytest.skip("the box was too slow to ask within the pause")
    chat, delegation = answers
    assert chat.status == 503, chat
    assert chat.header("Retry-After") is not None and chat.header("Retry-After").isdigit(), chat
    assert chat.header("X-Delivery-Mode") is None, chat
    err = chat.json()["error"]
    assert err["code"] == -32050 and err["data"]["ready"] is False, err
    assert err["data"]["queued"] is False and err["data"]["maybe_queued"] is False, err
    # A workspace token the replica has not loaded yet is not "unknown": 503, not 401.
    assert delegation.status == 503, delegation
    assert delegation.header("Retry-After") is not None, delegation
    assert ok.posts() == [], "nothing may reach the agent before the instance is ready"

    wait_for(lambda: readyz(sb) == 200, 15, "the instance to become ready")
    body = send_v03()
    r = a2a(sb, ws, body, token=tok)
    assert r.status == 200 and r.header("X-Delivery-Mode") == "push", r
    assert not [o for o in sb.log_lines() if o.get("reason") == "no_endpoint"], \
        "no message may fall back no_endpoint for a registered workspace"


# --------------------------------------------------------------------------------------
# switchboard killed with SIGKILL under load

def test_kill_9_under_load_loses_nothing_answered(make_redis, own_sb, agent):
    redis = make_redis()
    ok = agent("ok")
    sb = own_sb(redis.url)
    port = sb.port
    push_ws, poll_ws = register_pair(sb, ok)
    load = Load(port, sb.admin_token, [push_ws, poll_ws]).start()
    try:
        load.wait_count(200, lambda r: r[2] == 200, 20, "200 answers before the kill")
        sb.kill()  # SIGKILL to the whole group, mid-load
        killed_at = time.time()
        restarted = own_sb(redis.url, port=port, ready=False, admin_token=sb.admin_token)
        wait_for(lambda: readyz(restarted) == 200, 15, "the restarted instance to be ready")
        load.wait_count(200, ok_since(time.time()), 20, "200 answers after the restart")
    finally:
        load.stop()
    statuses = {}
    for r in load.results:
        statuses[r[2]] = statuses.get(r[2], 0) + 1
    # Nothing but 200, 503 + Retry-After (not ready yet) or a cut connection.
    assert set(statuses) <= {200, 503, None}, statuses
    for mid, ws, status, hdrs, body, t in load.results:
        if status == 503:
            assert hdrs.get("retry-after", "").isdigit(), (hdrs, body)
        if status == 200:
            assert hdrs.get("x-delivery-reason") != "no_endpoint", \
                "a registered workspace fell back no_endpoint (not-ready instance): %r" % body
    assert load.count(lambda r: r[2] == 200 and r[5] < killed_at) >= 200
    modes = audit(load, restarted, ok, push_ws, poll_ws)
    assert modes["push"] >= 100 and modes["poll"] >= 100, modes


# --------------------------------------------------------------------------------------
# Redis killed with SIGKILL and restarted under load

AOF = ("--appendonly", "yes", "--appendfsync", "always")


def test_redis_kill_9_under_load(make_redis, own_sb, agent):
    redis = make_redis(AOF, subdir="aof")
    ok = agent("ok")
    sb = own_sb(redis.url)
    push_ws, poll_ws = register_pair(sb, ok)
    load = Load(sb.port, sb.admin_token, [push_ws, poll_ws]).start()
    try:
        load.wait_count(200, lambda r: r[2] == 200, 20, "200 answers before Redis dies")
        redis.stop()  # SIGKILL
        load.wait_count(20, lambda r: r[2] == 503, 20, "503 answers while Redis is down")
        redis.start()  # same port, same dir: the AOF is replayed
        wait_for(lambda: readyz(sb) == 200, 20, "switchboard to see Redis again")
        back = time.time()
        load.wait_count(100, lambda r: r[2] == 200 and r[5] >= back and
                        r[3].get("x-delivery-mode") == "poll", 20,
                        "queued 200 answers after Redis came back")
    finally:
        load.stop()
    statuses = {}
    for r in load.results:
        statuses[r[2]] = statuses.get(r[2], 0) + 1
    assert set(statuses) <= {200, 503}, "only 200 or 503: %r (errors %d)" % (
        statuses, load.errors)
    for mid, ws, status, hdrs, body, t in load.results:
        if status == 503:
            assert hdrs.get("retry-after", "").isdigit(), (hdrs, body)
            err = json.loads(body)["error"]
            assert err["code"] == -32050 and err["data"]["queued"] is False, err
            assert ws == poll_ws, "pushes need no Redis: %r" % body
    modes = audit(load, sb, ok, push_ws, poll_ws)
    assert modes["push"] >= 100 and modes["poll"] >= 100, modes
    assert sb.alive()


# --------------------------------------------------------------------------------------
# a hung Redis: 503 says "maybe queued", and the retry returns the one task

def test_hung_redis_503_may_be_queued_and_retry_returns_the_task(make_redis, own_sb):
    redis = make_redis(("--enable-debug-command", "yes"))
    sb = own_sb(redis.url, extra_args=["--redis-command-timeout-ms", "500", "--threads", "1"])
    ws = unique_ws("hung")
    assert register(sb, ws, delivery_mode="poll").status == 200
    sleeper = threading.Thread(target=lambda: _debug_sleep(redis, 4), daemon=True)
    sleeper.start()
    wait_for(lambda: _sleeping(redis), 5, "DEBUG SLEEP to begin", interval=0.01)
    body = send_v03()
    r = a2a(sb, ws, body, timeout=10)
    sleeper.join(timeout=10)
    assert r.status == 503, r
    assert (r.header("Retry-After") or "").isdigit(), r
    err = r.json()["error"]
    assert err["data"]["queued"] is False and err["data"]["maybe_queued"] is True, err
    assert "may have been queued" in err["message"] and "same messageId" in err["message"], err

    wait_for(lambda: readyz(sb) == 200, 15, "switchboard to reconnect after the sleep")
    # The append sent before the 503 ran when Redis woke up: the message IS queued. The
    # retry (same source, same messageId) answers that task instead of a second copy.
    retry = wait_for(lambda: _answer(sb, ws, body), 15, "the retry to be answered 200")
    task = retry.json()["result"]
    mid = body["params"]["message"]["messageId"]
    peek = harness.inbox_peek(sb, ws, max=100).json()["messages"]
    mine = [m for m in peek if m["message_id"] == mid]
    assert len(mine) == 1, "exactly one copy is queued: %r" % peek
    assert mine[0]["task_id"] == task["id"], (mine, task)
    assert [o for o in sb.log_lines() if o.get("message_id") == mid and o.get("duplicate")], \
        "the retry is logged as a duplicate of the first copy"


def _debug_sleep(redis, seconds):
    try:
        with harness.RespClient(redis.port, timeout=seconds + 5) as c:
            c.call("DEBUG", "SLEEP", str(seconds))
    except (OSError, harness.RespError):
        pass


def _sleeping(redis):
    """True once Redis no longer answers PING within 300 ms (DEBUG SLEEP began)."""
    try:
        with harness.RespClient(redis.port, timeout=0.3) as c:
            c.call("PING")
        return False
    except OSError:
        return True


def _answer(sb, ws, body):
    r = a2a(sb, ws, body, timeout=5)
    return r if r.status == 200 else None


# --------------------------------------------------------------------------------------
# SPEC §5.2: a push delivered while Redis is unreachable still gets its record

def test_records_of_pushes_made_while_redis_is_away(make_redis, own_sb, agent):
    redis = make_redis(AOF, subdir="aof-rec")
    ok = agent("ok")
    sb = own_sb(redis.url)
    ws = unique_ws("rec")
    assert register(sb, ws, url=ok.url()).status == 200
    redis.stop()
    # every worker's connection has noticed (readyz asks whichever worker accepts)
    wait_for(lambda: all(readyz(sb) == 503 for _ in range(4)), 10, "Redis to be seen down")
    mids = []
    for _ in range(6):
        body = send_v03()
        r = a2a(sb, ws, body)
        assert r.status == 200 and r.header("X-Delivery-Mode") == "push", r
        mids.append(body["params"]["message"]["messageId"])
    redis.start()
    wait_for(lambda: readyz(sb) == 200, 20, "switchboard to see Redis again")

    def all_recorded():
        for mid in mids:
            rr = request(sb, "GET", "/workspaces/%s/messages/%s" % (ws, mid),
                         token=sb.admin_token)
            if rr.status != 200 or rr.json().get("state") != "delivered":
                return False
        return True

    wait_for(all_recorded, 15, "the delivery records of pushes made while Redis was away")
    rec = request(sb, "GET", "/workspaces/%s/messages/%s" % (ws, mids[0]),
                  token=sb.admin_token).json()
    assert rec["mode"] == "push" and rec["attempts"][0]["outcome"] == "delivered", rec
    metrics = request(sb, "GET", "/metrics").body.decode()
    deferred = [ln for ln in metrics.splitlines()
                if ln.startswith("switchboard_record_notes_deferred_total ")]
    assert deferred and float(deferred[0].split()[1]) >= len(mids), deferred
    assert "switchboard_record_notes_dropped_total 0" in metrics
