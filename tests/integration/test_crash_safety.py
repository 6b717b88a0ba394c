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
def own_redis(workdir):
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

    def make(redis_url, extra_args=(), port=None, ready=True):
        inst = Switchboard(os.path.join(workdir, "sb"), redis_url, extra_args=extra_args,
                           name="crash")
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

def test_not_ready_answers_503_then_serves(own_redis, own_sb, agent):
    redis = own_redis()
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
