"""switchboard on a real Redis Cluster (issue 10): three masters without replicas, built
by the module fixture with `redis-cli --cluster create` (`cluster-require-full-coverage
no`). Workspace ids are chosen by their hash slot so that each test covers every master.
Covered: detection from a node URL and redis+cluster://; mint/register/push/fall back/
lease/ack/tasks/get/dead letters on every master; a long-poll on B woken by a message
queued through A; register on A, send via B, 100 times; a slot migrated while a writer
and a consumer run (every message answered 200 delivered); masters killed (a workspace
master: its workspaces 503 + Retry-After; then the {sb} master: registry writes 503; the
last master keeps queuing — the last test, it breaks the cluster).
"""

import os
import subprocess
import threading
import time

import pytest

import harness
from harness import (RespClient, a2a, inbox_ack, inbox_lease, mint, register, request,
                     send_v03, task_call)

MASTERS = 3


def crc16(data):
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def slot_of(key):
    k = key.encode()
    s = k.find(b"{")
    if s >= 0:
        e = k.find(b"}", s + 1)
        if e > s + 1:
            k = k[s + 1:e]
    return crc16(k) & 16383


def cluster_port():
    """A free port whose cluster bus port (+10000) is valid and free too."""
    import random
    import socket
    for _ in range(200):
        p = random.randint(20000, 39999)
        ok = True
        for q in (p, p + 10000):
            s = socket.socket()
            try:
                s.bind((harness.LOOPBACK, q))
            except OSError:
                ok = False
            finally:
                s.close()
        if ok:
            return p
    raise RuntimeError("no free port pair for a cluster node")


class Cluster:
    def __init__(self, workdir):
        self.nodes = []
        for i in range(MASTERS):
            d = os.path.join(workdir, "node%d" % i)
            self.nodes.append(harness.RedisServer(d, port=cluster_port(), extra_args=[
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "1500",
                "--cluster-require-full-coverage", "no"]))

    def start(self):
        for n in self.nodes:
            for attempt in range(3):  # a port pair taken meanwhile: another pair
                try:
                    n.start()
                    break
                except RuntimeError:
                    if attempt == 2:
                        raise
                    n.port = cluster_port()
                    n.log = os.path.join(n.workdir, "redis-%d.log" % n.port)
        addrs = ["%s:%d" % (harness.LOOPBACK, n.port) for n in self.nodes]
        p = subprocess.run(["redis-cli", "--cluster", "create"] + addrs +
                           ["--cluster-replicas", "0", "--cluster-yes"],
                           capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        assert p.returncode == 0, p.stdout.decode() + p.stderr.decode()
        deadline = time.time() + 20
        while time.time() < deadline:
            if all(self.state_ok(n) for n in self.nodes):
                return self
            time.sleep(0.1)
        raise RuntimeError("the cluster never reached cluster_state:ok")

    @staticmethod
    def state_ok(n):
        try:
            with n.client() as c:
                info = c.call("CLUSTER", "INFO").decode()
            return "cluster_state:ok" in info and "cluster_known_nodes:%d" % MASTERS in info
        except (OSError, harness.RespError):
            return False

    def stop(self):
        for n in self.nodes:
            n.stop()

    def owner(self, slot):
        """The index of the master serving |slot| (asked of a live node)."""
        for n in self.nodes:
            if n.proc is None:
                continue
            with n.client() as c:
                for lo, hi, master, *_ in c.call("CLUSTER", "SLOTS"):
                    if lo <= slot <= hi:
                        port = master[1]
                        return [m.port for m in self.nodes].index(port)
        raise AssertionError("slot %d is not served" % slot)

    def node_id(self, i):
        with self.nodes[i].client() as c:
            return c.call("CLUSTER", "MYID").decode()

    def migrate_slot(self, slot, src, dst):
        """The documented resharding steps, keys moved 10 at a time while traffic runs."""
        sid, did = self.node_id(src), self.node_id(dst)
        s, d = self.nodes[src], self.nodes[dst]
        with d.client() as c:
            c.call("CLUSTER", "SETSLOT", str(slot), "IMPORTING", sid)
        with s.client() as c:
            c.call("CLUSTER", "SETSLOT", str(slot), "MIGRATING", did)
            while True:
                keys = c.call("CLUSTER", "GETKEYSINSLOT", str(slot), "10")
                if not keys:
                    break
                c.call("MIGRATE", harness.LOOPBACK, str(d.port), "", "0", "5000", "KEYS",
                       *[k.decode() for k in keys])
                time.sleep(0.02)  # let traffic run between batches
        for n in self.nodes:
            with n.client() as c:
                c.call("CLUSTER", "SETSLOT", str(slot), "NODE", did)


@pytest.fixture(scope="module")
def cluster(workdir):
    cl = Cluster(os.path.join(workdir, "cluster"))
    try:
        yield cl.start()
    finally:
        cl.stop()


@pytest.fixture(scope="module")
def sb_a(workdir, cluster):
    """Started with a plain redis:// URL of one node: the cluster is detected."""
    inst = harness.Switchboard(os.path.join(workdir, "sb-a"), cluster.nodes[0].url, name="sb-a",
                               extra_args=["--lease-s", "30"])
    try:
        yield inst.start()
    finally:
        inst.stop()
        inst.kill()


@pytest.fixture(scope="module")
def sb_b(workdir, cluster):
    """Started with redis+cluster:// listing every node."""
    url = "redis+cluster://" + ",".join("%s:%d" % (harness.LOOPBACK, n.port)
                                        for n in cluster.nodes)
    inst = harness.Switchboard(os.path.join(workdir, "sb-b"), url, name="sb-b")
    try:
        yield inst.start()
    finally:
        inst.stop()
        inst.kill()


def ws_on(cluster, master, avoid_slot=None, prefix="cl"):
    """A fresh workspace id whose slot the master |master| serves."""
    for i in range(100000):
        ws = "%s-%s-%d" % (prefix, harness.uuid.uuid4().hex[:6], i)
        s = slot_of(ws)
        if s != avoid_slot and cluster.owner(s) == master:
            return ws
    raise AssertionError("no workspace id for master %d" % master)


def fall_back(sb, ws, **kw):
    body = send_v03(**kw)
    r = a2a(sb, ws, body)
    assert r.status == 200 and r.header("X-Delivery-Mode") == "poll", r
    return body, r.json()["result"]["id"]


def test_cluster_detected_from_a_node_url(sb_a, sb_b):
    for sb in (sb_a, sb_b):
        assert sb.wait_log(lambda o: o.get("event") == "redis_cluster_map"), sb.diagnostics()
        assert request(sb, "GET", "/readyz").status == 200


def test_queue_lifecycle_on_every_master(cluster, sb_a, agent):
    ag = agent()
    for m in range(MASTERS):
        ws = ws_on(cluster, m)
        tok = mint(sb_a, ws)["token"]
        # push
        assert register(sb_a, ws, url=ag.url()).status == 200
        r = a2a(sb_a, ws, send_v03())
        assert r.status == 200 and r.header("X-Delivery-Mode") == "push", r
        # fall back, lease, ack, tasks/get
        assert register(sb_a, ws, delivery_mode="poll").status == 200
        msgs = [fall_back(sb_a, ws) for _ in range(2)]
        got = inbox_lease(sb_a, ws, token=tok, max=10).json()["messages"]
        assert [g["task_id"] for g in got] == [t for _, t in msgs], got
        assert inbox_ack(sb_a, ws, got[0]["id"], token=tok,
                         result={"kind": "message", "role": "agent", "messageId": "x",
                                 "parts": [{"kind": "text", "text": "done"}]}).status == 200
        t = task_call(sb_a, ws, "tasks/get", msgs[0][1]).json()["result"]
        assert t["status"]["state"] == "completed", t
        # a dead letter (expired)
        fall_back(sb_a, ws, extra_params={"metadata": {"expires_in_s": 1}})
        deadline = time.time() + 10
        while time.time() < deadline:
            v = request(sb_a, "GET", "/workspaces/%s/delivery" % ws,
                        token=sb_a.admin_token).json()
            if v["queue"]["dead_letters"] == 1:
                break
            inbox_lease(sb_a, ws, token=tok, max=1)  # maintenance runs on every call
            time.sleep(0.3)
        assert v["queue"]["dead_letters"] == 1, v
    # the overview reads the index (the {sb} slot) and every workspace's own master
    r = request(sb_a, "GET", "/delivery", token=sb_a.admin_token)
    assert r.status == 200, r


def test_scripts_reloaded_on_every_master_after_flush(cluster, sb_a):
    """Scripts go by SHA to each master; SCRIPT FLUSH on all of them makes each node's
    connection send its scripts again in full (NOSCRIPT), and nothing is lost or reordered."""
    wss = [ws_on(cluster, m, prefix="fl") for m in range(MASTERS)]
    first = {ws: [fall_back(sb_a, ws) for _ in range(2)] for ws in wss}
    for n in cluster.nodes:
        with n.client() as c:
            c.call("SCRIPT", "FLUSH")
    then = {ws: [fall_back(sb_a, ws) for _ in range(2)] for ws in wss}
    for ws in wss:
        tok = mint(sb_a, ws)["token"]
        got = inbox_lease(sb_a, ws, token=tok, max=10).json()["messages"]
        assert [g["task_id"] for g in got] == [t for _, t in first[ws] + then[ws]], got


def test_long_poll_woken_across_instances_and_masters(cluster, sb_a, sb_b):
    """The inbox wake-up (PUBLISH sb:notify) crosses nodes: a long-poll on B, on a
    workspace of every master, returns soon after A queues a message."""
    for m in range(MASTERS):
        ws = ws_on(cluster, m, prefix="lp")
        assert register(sb_a, ws, delivery_mode="poll").status == 200
        out = {}

        def poll():
            t0 = time.time()
            out["r"] = inbox_lease(sb_b, ws, wait_s=10, timeout=20)
            out["s"] = time.time() - t0
        th = threading.Thread(target=poll)
        th.start()
        time.sleep(0.5)  # the long-poll is waiting
        fall_back(sb_a, ws)
        th.join(20)
        assert out["r"].status == 200 and len(out["r"].json()["messages"]) == 1, out
        assert out["s"] < 5, "woken by the notify, not by the 10 s timeout: %r" % out


SB_KEYS = {"schema", "rev", "endpoints", "tokens", "instances", "ep", "wstok", "queues", "epoch",
           "redeliver", "pnws",
           "fallbacks"}


def test_every_key_is_a_workspace_key_or_one_of_the_sb_keys(cluster, sb_a):
    """SPEC §4.5: every key of one workspace carries that workspace's hash tag; what is not
    a workspace's key is one of the few fixed {sb} keys (no key is named after a
    workspace without its tag)."""
    seen = 0
    for n in cluster.nodes:
        with n.client() as c:
            cursor = b"0"
            while True:
                cursor, keys = c.call("SCAN", cursor.decode(), "COUNT", "1000")
                for k in (k.decode() for k in keys):
                    seen += 1
                    if k.startswith("sb:{sb}:"):
                        assert k[len("sb:{sb}:"):] in SB_KEYS, k
                    else:
                        tag = k[k.index("{") + 1:k.index("}")]
                        assert k.startswith("sb:{%s}:" % tag) and tag != "sb", k
                        assert slot_of(k) == slot_of(tag), k
                if cursor == b"0":
                    break
    assert seen > 50


def test_register_on_a_send_via_b_100_times(cluster, sb_a, sb_b, agent):
    ag = agent()
    misses = []
    for i in range(100):
        ws = "pair-%s-%d" % (harness.uuid.uuid4().hex[:6], i)
        assert register(sb_a, ws, url=ag.url()).status == 200
        r = a2a(sb_b, ws, send_v03())
        if r.status != 200 or r.header("X-Delivery-Mode") != "push":
            misses.append((ws, r.status, r.header("X-Delivery-Mode")))
    assert misses == [], misses
    assert len(ag.wait_posts(100, timeout=10)) >= 100


def test_slot_migrated_mid_run_loses_nothing(cluster, sb_a):
    """A writer queues and a consumer leases and acks while the workspace's slot moves to
    another master, keys 10 at a time. Every message answered 200 must be acked in the
    end: a lease whose reply was lost (503 while the slot was half moved) only delays its
    messages until the lease ends, which the final drain waits for."""
    ws = ws_on(cluster, 0, prefix="mig")
    assert register(sb_a, ws, delivery_mode="poll").status == 200
    slot = slot_of(ws)
    answered, acked, stop, errors = [], set(), threading.Event(), []

    def writer():
        while not stop.is_set():
            r = a2a(sb_a, ws, send_v03())
            if r.status == 200:
                answered.append(r.json()["result"]["id"])
            elif r.status != 503:
                errors.append(r)

    def consumer():
        while not stop.is_set():
            r = inbox_lease(sb_a, ws, max=5, lease_s=2)
            if r.status != 200:
                if r.status != 503:
                    errors.append(r)
                time.sleep(0.05)
                continue
            for m in r.json()["messages"]:
                if inbox_ack(sb_a, ws, m["id"]).status == 200:
                    acked.add(m["task_id"])
    threads = [threading.Thread(target=writer), threading.Thread(target=consumer)]
    for th in threads:
        th.start()
    try:
        deadline = time.time() + 10
        while len(answered) < 20 and time.time() < deadline:
            time.sleep(0.05)
        cluster.migrate_slot(slot, 0, 1)
        n0 = len(answered)
        deadline = time.time() + 10
        while len(answered) < n0 + 20 and time.time() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        for th in threads:
            th.join(30)
    assert cluster.owner(slot) == 1
    assert not errors, errors[:3]
    assert n0 >= 20 and len(answered) >= n0 + 20, (n0, len(answered))
    deadline = time.time() + 10
    while not set(answered) <= acked and time.time() < deadline:
        got = inbox_lease(sb_a, ws, max=100, lease_s=2).json()["messages"]
        for m in got:
            assert inbox_ack(sb_a, ws, m["id"]).status == 200
            acked.add(m["task_id"])
        if not got:
            time.sleep(0.3)
    missing = set(answered) - acked
    assert not missing, "%d of %d answered 200 never delivered" % (len(missing), len(answered))


def test_killed_master_only_its_workspaces_503(cluster, sb_a):
    """Kills a workspace master, then the {sb} master: each time only what lived there
    answers 503 (+ Retry-After, never 500); the last master keeps queuing."""
    reg_owner = cluster.owner(slot_of("sb:{sb}:rev"))
    victim = next(i for i in range(MASTERS) if i != reg_owner)
    last = next(i for i in range(MASTERS) if i not in (reg_owner, victim))
    dead_ws = ws_on(cluster, victim, prefix="kill")
    live_ws = ws_on(cluster, reg_owner, prefix="live")
    last_ws = ws_on(cluster, last, prefix="last")
    for ws in (dead_ws, live_ws, last_ws):
        assert register(sb_a, ws, delivery_mode="poll").status == 200
    cluster.nodes[victim].stop()
    deadline = time.time() + 10
    while time.time() < deadline:
        r = a2a(sb_a, dead_ws, send_v03())
        if r.status == 503:
            break
        assert r.status == 200, r
        time.sleep(0.1)
    assert r.status == 503 and r.header("Retry-After"), r
    for _ in range(5):
        fall_back(sb_a, live_ws)
        assert a2a(sb_a, dead_ws, send_v03()).status == 503
    assert len(inbox_lease(sb_a, live_ws, max=10).json()["messages"]) == 5

    # the {sb} master: registry writes and the overview go, queues elsewhere stay
    cluster.nodes[reg_owner].stop()
    deadline = time.time() + 10
    while time.time() < deadline:
        r = register(sb_a, harness.unique_ws("late"), delivery_mode="poll")
        if r.status == 503:
            break
        assert r.status == 200, r
        time.sleep(0.1)
    assert r.status == 503, r
    assert request(sb_a, "GET", "/delivery", token=sb_a.admin_token).status == 503
    for _ in range(5):
        fall_back(sb_a, last_ws)
    assert len(inbox_lease(sb_a, last_ws, max=10).json()["messages"]) == 5
