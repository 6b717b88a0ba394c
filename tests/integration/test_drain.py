"""The recovery drain (SPEC §4.4): when a push-mode workspace registers or heartbeats with
spare capacity and its queue holds messages, switchboard pushes them itself, oldest
first, within capacity (max_concurrency − active_tasks, else the default in-flight limit,
less a quarter kept for live pushes; one at a time at first and for `ordered`), with
exactly the headers of a normal push, acks each one the agent accepts (tasks/get then
shows the agent's answer), and stops at the first failure."""

import json
import time

from harness import (FakeAgent, a2a, free_port, heartbeat, inbox_peek, register, send_v03,
                     task_call, unique_ws)


def queue_msgs(sb, ws, n, headers=None):
    out = []
    for i in range(n):
        body = send_v03(text="queued %d" % i)
        r = a2a(sb, ws, body, headers=headers)
        assert r.status == 200 and r.header("X-Delivery-Mode") == "poll", r
        out.append((body, r.json()["result"]["id"]))
    return out


def mid(body):
    return body["params"]["message"]["messageId"]


def wait_empty(sb, ws, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        p = inbox_peek(sb, ws).json()
        if p["ready"] == 0 and p["leased"] == 0:
            return p
        time.sleep(0.05)
    return inbox_peek(sb, ws).json()


def max_overlap(posts, hold_s):
    """The most requests an agent that holds each for |hold_s| had at once."""
    times = sorted(p["time"] for p in posts)
    return max(sum(1 for u in times if t <= u < t + hold_s * 0.8) for t in times)


def test_register_drains_oldest_first_with_push_headers(sb, agent):
    ws = unique_ws()
    headers = {"A2A-Version": "0.3", "X-Switchboard-User": "alice@example.com"}
    msgs = queue_msgs(sb, ws, 3, headers=headers)
    ag = agent("ok")
    r = register(sb, ws, ag.url("/a2a"))
    assert r.status == 200, r
    secret = r.json()["inbound_secret"]
    posts = ag.wait_posts(3)
    got = [FakeAgent.header(p, "X-Switchboard-Message-Id") for p in posts]
    assert got[0] == mid(msgs[0][0]), "oldest first (alone; then several at once)"
    assert sorted(got) == sorted(mid(b) for b, _ in msgs)
    by_mid = {FakeAgent.header(p, "X-Switchboard-Message-Id"): p for p in posts}
    posts = [by_mid[mid(b)] for b, _ in msgs]
    for p, (body, _) in zip(posts, msgs):
        assert p["path"] == "/a2a"
        assert FakeAgent.header(p, "Authorization") == "Bearer %s" % secret
        assert FakeAgent.header(p, "X-Switchboard-Source") == "platform"
        assert FakeAgent.header(p, "X-Switchboard-Kind") == "chat"
        assert FakeAgent.header(p, "A2A-Version") == "0.3"
        assert FakeAgent.header(p, "X-Switchboard-User") == "alice@example.com"
        assert FakeAgent.header(p, "Content-Type") == "application/json"
        assert FakeAgent.body_bytes(p) == json.dumps(body).encode(), "byte for byte"
    p = wait_empty(sb, ws)
    assert p["ready"] == 0 and p["leased"] == 0, p
    # acked with the agent's answer: tasks/get shows it
    task = task_call(sb, ws, "tasks/get", msgs[0][1]).json()["result"]
    assert task["status"]["state"] == "completed", task
    assert task["status"]["message"]["parts"][0]["text"] == "echo: queued 0", task
    line = sb.wait_log(lambda o: o.get("message_id") == mid(msgs[0][0]) and o.get("drained"))
    assert line and line[-1]["mode"] == "push" and line[-1]["reason"] is None, line


def test_without_max_concurrency_several_at_once_after_the_first(sb, agent):
    ws = unique_ws()
    queue_msgs(sb, ws, 4)
    ag = agent("slow:0.3")
    assert register(sb, ws, ag.url()).status == 200
    posts = ag.wait_posts(4, timeout=5)
    assert len(posts) == 4
    times = sorted(p["time"] for p in posts)
    assert times[1] - times[0] >= 0.2, "the first alone (it may be the circuit's probe)"
    assert max_overlap(posts, 0.3) >= 2, "then several at once without max_concurrency"
    assert wait_empty(sb, ws)["ready"] == 0


def test_heartbeat_drains_within_spare_capacity(sb, agent):
    ws = unique_ws()
    port = free_port()
    # registered, but the agent is down: messages fall back (3 < the circuit threshold)
    assert register(sb, ws, "http://127.0.0.1:%d/" % port, max_concurrency=3).status == 200
    for body in (send_v03() for _ in range(3)):
        r = a2a(sb, ws, body)
        assert r.header("X-Delivery-Reason") == "connect_refused", r
    ag = agent("slow:0.5", "--port", str(port))
    # no spare capacity: nothing is drained
    assert heartbeat(sb, ws, active_tasks=3).status == 200
    time.sleep(0.4)
    assert ag.posts() == [], "active_tasks == max_concurrency: no drain"
    # one slot used of three: two at a time
    assert heartbeat(sb, ws, active_tasks=1).status == 200
    posts = ag.wait_posts(3, timeout=5)
    assert len(posts) == 3, posts
    assert max_overlap(posts, 0.5) == 2, "spare capacity is 2"
    assert wait_empty(sb, ws)["ready"] == 0


def test_drain_stops_at_the_first_failure(sb, agent):
    ws = unique_ws()
    msgs = queue_msgs(sb, ws, 3)
    ag = agent("status:500")
    assert register(sb, ws, ag.url()).status == 200
    posts = ag.wait_posts(1)
    time.sleep(0.3)
    assert len(ag.posts()) == 1, "stops at the first failure"
    assert FakeAgent.header(posts[0], "X-Switchboard-Message-Id") == mid(msgs[0][0])
    p = inbox_peek(sb, ws, max=10).json()
    assert [m["message_id"] for m in p["messages"]] == [mid(b) for b, _ in msgs], p
    assert p["messages"][0]["delivery_count"] == 0, "an answered 500 never counts a delivery"
    line = sb.wait_log(lambda o: o.get("message_id") == mid(msgs[0][0]) and o.get("drained"))
    assert line and line[-1]["reason"] == "http_5xx", line


def test_poll_mode_does_not_drain(sb, agent):
    ws = unique_ws()
    queue_msgs(sb, ws, 2)
    ag = agent("ok")
    assert register(sb, ws, ag.url(), delivery_mode="poll").status == 200
    assert heartbeat(sb, ws).status == 200
    time.sleep(0.4)
    assert ag.posts() == []
    assert inbox_peek(sb, ws).json()["ready"] == 2


def test_agent_jsonrpc_error_is_delivered_and_task_failed(sb, agent):
    ws = unique_ws()
    (_, task_id), = queue_msgs(sb, ws, 1)
    ag = agent("jsonrpc_error")
    assert register(sb, ws, ag.url()).status == 200
    ag.wait_posts(1)
    assert wait_empty(sb, ws)["ready"] == 0
    task = task_call(sb, ws, "tasks/get", task_id).json()["result"]
    assert task["status"]["state"] == "failed", task
    assert task["metadata"]["switchboard"]["error"]["code"] == -32001, task
