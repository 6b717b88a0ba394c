"""switchboard's own tasks (SPEC §4.3): tasks/get and tasks/cancel (v1.0 GetTask,
CancelTask) for a task id switchboard issued are answered from its state — submitted
while queued, working while leased, completed with the ack's result, failed when
dead-lettered, canceled — and never pushed; other task ids go to the agent as usual.
A repeated (source, messageId) while the first copy is queued gets the same task."""

import uuid

from harness import (a2a, inbox_ack, inbox_lease, inbox_peek, mint, register, send_v03,
                     send_v10, task_call, unique_ws)


def queue_one(sb, ws, body, token=None):
    r = a2a(sb, ws, body, token=token)
    assert r.status == 200 and r.header("X-Delivery-Mode") == "poll", r
    result = r.json()["result"]
    return result["task"]["id"] if "task" in result else result["id"]


def state_of(r):
    assert r.status == 200, r
    j = r.json()
    assert "error" not in j, j
    return j["result"]["status"]["state"]


def test_lifecycle_v03(sb):
    ws = unique_ws()
    body = send_v03()
    task_id = queue_one(sb, ws, body)
    r = task_call(sb, ws, "tasks/get", task_id, rid="g-1")
    assert r.json()["id"] == "g-1"
    task = r.json()["result"]
    assert task["kind"] == "task" and task["id"] == task_id, task
    assert task["status"]["state"] == "submitted", task
    assert task["metadata"]["switchboard"]["state"] == "queued", task

    qid = inbox_lease(sb, ws).json()["messages"][0]["id"]
    assert state_of(task_call(sb, ws, "tasks/get", task_id)) == "working"

    answer = {"kind": "message", "role": "agent", "messageId": "a-1",
              "parts": [{"kind": "text", "text": "the answer"}]}
    assert inbox_ack(sb, ws, qid, result=answer).status == 200
    task = task_call(sb, ws, "tasks/get", task_id).json()["result"]
    assert task["status"]["state"] == "completed", task
    assert task["status"]["message"] == answer, task


def test_lifecycle_v10(sb):
    ws = unique_ws()
    task_id = queue_one(sb, ws, send_v10())
    r = task_call(sb, ws, "GetTask", task_id)
    assert state_of(r) == "TASK_STATE_SUBMITTED", r
    qid = inbox_lease(sb, ws).json()["messages"][0]["id"]
    assert state_of(task_call(sb, ws, "GetTask", task_id)) == "TASK_STATE_WORKING"
    agent_task = {"task": {"id": "agent-t-1", "contextId": "c",
                           "status": {"state": "TASK_STATE_COMPLETED"},
                           "artifacts": [{"artifactId": "x", "parts": [{"text": "42"}]}]}}
    assert inbox_ack(sb, ws, qid, result=agent_task).status == 200
    task = task_call(sb, ws, "GetTask", task_id).json()["result"]
    assert task["id"] == task_id, task
    assert task["status"]["state"] == "TASK_STATE_COMPLETED", task
    assert task["artifacts"] == agent_task["task"]["artifacts"], task
    assert task["metadata"]["switchboard"]["agent_task_id"] == "agent-t-1", task


def test_cancel_while_queued_only(sb):
    ws = unique_ws()
    t1 = queue_one(sb, ws, send_v03())
    t2 = queue_one(sb, ws, send_v10())
    r = task_call(sb, ws, "CancelTask", t2)
    assert state_of(r) == "TASK_STATE_CANCELED", r
    assert state_of(task_call(sb, ws, "tasks/cancel", t2)) == "canceled", "idempotent"
    # the canceled message left the queue: only the first is leased
    msgs = inbox_lease(sb, ws, max=10).json()["messages"]
    assert [m["task_id"] for m in msgs] == [t1], msgs
    # a leased message is being worked on: not cancelable
    r = task_call(sb, ws, "tasks/cancel", t1)
    err = r.json().get("error")
    assert r.status == 200 and err and err["code"] == -32002, r
    assert err["data"]["state"] == "leased", err
    assert state_of(task_call(sb, ws, "tasks/get", t2)) == "canceled"


def test_unknown_ids_are_not_found_and_never_pushed(sb, agent):
    ag = agent("ok")
    ws = unique_ws()
    assert register(sb, ws, ag.url()).status == 200
    for tid in ("sbtask_" + uuid.uuid4().hex[:24], "sbtask_garbage"):
        for method in ("tasks/get", "GetTask", "tasks/cancel"):
            r = task_call(sb, ws, method, tid)
            assert r.status == 200 and r.json()["error"]["code"] == -32001, r
    assert ag.posts() == [], "switchboard's task ids never reach the agent"


def test_other_task_ids_are_pushed(sb, agent):
    ag = agent("jsonrpc_error")
    ws = unique_ws()
    assert register(sb, ws, ag.url()).status == 200
    r = task_call(sb, ws, "tasks/get", "agent-task-7")
    assert r.status == 200 and r.header("X-Delivery-Mode") == "push", r
    posts = ag.posts()
    assert len(posts) == 1 and '"agent-task-7"' in posts[0]["body"], posts


def test_who_may_see_a_task(sb):
    target, src, stranger = unique_ws(), unique_ws(), unique_ws()
    toks = {w: mint(sb, w)["token"] for w in (target, src, stranger)}
    task_id = queue_one(sb, target, send_v03(), token=toks[src])
    for who in (src, target):
        assert state_of(task_call(sb, target, "tasks/get", task_id, token=toks[who])) == \
            "submitted"
    assert state_of(task_call(sb, target, "tasks/get", task_id)) == "submitted"  # admin
    for method in ("tasks/get", "tasks/cancel"):
        r = task_call(sb, target, method, task_id, token=toks[stranger])
        assert r.json()["error"]["code"] == -32001, r
    assert state_of(task_call(sb, target, "tasks/get", task_id)) == "submitted", \
        "a stranger's cancel changed nothing"
    # a task id is only known under its own workspace
    r = task_call(sb, stranger, "tasks/get", task_id)
    assert r.json()["error"]["code"] == -32001, r


def test_repeated_message_is_one_task(sb):
    ws, src = unique_ws(), unique_ws()
    tok = mint(sb, src)["token"]
    body = send_v03()
    first = queue_one(sb, ws, body)
    body2 = dict(body, id="another-rpc-id")
    r = a2a(sb, ws, body2)
    assert r.json()["id"] == "another-rpc-id"
    assert r.json()["result"]["id"] == first, "the same (source, messageId) is the same task"
    # another source with the same messageId is another message
    other = queue_one(sb, ws, body, token=tok)
    assert other != first
    p = inbox_peek(sb, ws, max=10).json()
    assert p["ready"] == 2, p
    # still the same task while leased; a new one once the first copy is done
    qid = [m["id"] for m in inbox_lease(sb, ws, max=1).json()["messages"]][0]
    assert queue_one(sb, ws, body) == first
    assert inbox_ack(sb, ws, qid).status == 200
    assert queue_one(sb, ws, body) != first
