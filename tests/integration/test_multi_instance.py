"""Two switchboards on one Redis (SPEC §4.1, §4.4): a registration through one is used
by the other, a message queued through one is leased through the other and acked through
the first, a long-poll on one is woken by a message sent through the other, and racing
consumers or racing recovery drains never hand out the same message twice."""

import collections
import threading
import time

import pytest

from harness import (FakeAgent, a2a, assert_pushed, heartbeat, inbox_ack, inbox_lease,
                     inbox_peek, register, send_v03, task_call, unique_ws)


@pytest.fixture(scope="module")
def pair(sb, module_make_sb):
    return sb, module_make_sb(name="sb-b")


def queue_msgs(sb, ws, n):
    out = []
    for _ in range(n):
        body = send_v03()
        r = a2a(sb, ws, body)
        assert r.status == 200 and r.header("X-Delivery-Mode") == "poll", r
        out.append(body["params"]["message"]["messageId"])
    return out


def test_register_on_one_send_on_the_other(pair, agent):
    a, b = pair
    ag = agent("ok")
    ws = unique_ws()
    assert register(a, ws, ag.url()).status == 200
    assert_pushed(a2a(b, ws, send_v03()))
    assert len(ag.posts()) == 1


def test_queue_on_one_lease_on_other_ack_on_first(pair):
    a, b = pair
    ws = unique_ws()
    body = send_v03()
    task_id = a2a(b, ws, body).json()["result"]["id"]
    msgs = inbox_lease(a, ws, lease_s=30).json()["messages"]
    assert [m["task_id"] for m in msgs] == [task_id], msgs
    assert task_call(b, ws, "tasks/get", task_id).json()["result"]["status"]["state"] == \
        "working"
    assert inbox_ack(b, ws, msgs[0]["id"], result={"kind": "message", "role": "agent",
                                                   "messageId": "x", "parts": []}).status == 200
    assert task_call(a, ws, "tasks/get", task_id).json()["result"]["status"]["state"] == \
        "completed"


def test_long_poll_on_one_woken_by_the_other(pair):
    a, b = pair
    ws = unique_ws()
    out = {}

    def wait():
        t0 = time.time()
        out["r"] = inbox_lease(a, ws, wait_s=10, timeout=20)
        out["took"] = time.time() - t0
    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.5)
    mid, = queue_msgs(b, ws, 1)
    t.join(15)
    assert [m["message_id"] for m in out["r"].json()["messages"]] == [mid], out
    assert out["took"] < 2.5, out["took"]


def test_racing_consumers_never_share_a_lease(pair):
    a, b = pair
    ws = unique_ws()
    mids = queue_msgs(a, ws, 20)
    got = {}

    def take(name, inst):
        ids = []
        for _ in range(10):
            ids += [m["message_id"] for m in inbox_lease(inst, ws, max=3, lease_s=60)
                    .json()["messages"]]
        got[name] = ids
    ts = [threading.Thread(target=take, args=(n, i)) for n, i in (("a", a), ("b", b))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(20)
    everything = got["a"] + got["b"]
    assert sorted(everything) == sorted(mids), "each message leased exactly once: %r" % got


def test_racing_drains_deliver_each_message_once(pair, agent):
    a, b = pair
    ws = unique_ws()
    mids = queue_msgs(a, ws, 12)
    ag = agent("slow:0.05")
    # both instances start a drain at the same moment: register on A, heartbeat on B
    assert register(a, ws, ag.url(), max_concurrency=4).status == 200
    ts = [threading.Thread(target=lambda: heartbeat(b, ws)),
          threading.Thread(target=lambda: heartbeat(a, ws))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    posts = ag.wait_posts(12, timeout=10)
    time.sleep(0.3)
    seen = collections.Counter(FakeAgent.header(p, "X-Switchboard-Message-Id")
                               for p in ag.posts())
    assert set(seen) == set(mids), seen
    assert max(seen.values()) == 1, "a message was pushed twice: %r" % seen
    deadline = time.time() + 5
    while time.time() < deadline and inbox_peek(a, ws).json()["ready"] + \
            inbox_peek(a, ws).json()["leased"] > 0:
        time.sleep(0.05)
    p = inbox_peek(b, ws).json()
    assert p["ready"] == 0 and p["leased"] == 0, p
    assert len(posts) >= 12
