"""Dead letters (SPEC §3, §4.4): listed newest first with their request and why they died;
replayed to the front of the queue with a fresh expiry, delivery_count 0 and the task
submitted again, then redelivered like any other message; purged for good (the record
says purged). Also through sbctl dead-letters / replay / purge."""

import json
import os
import subprocess
import time

from harness import (FakeAgent, a2a, inbox_peek, register, request, send_v03, sb_bin_dir,
                     task_call, unique_ws)


def expiring(sb, ws, text):
    body = send_v03(text=text, extra_params={"metadata": {"expires_in_s": 1}})
    r = a2a(sb, ws, body)
    assert r.status == 200 and r.header("X-Delivery-Mode") == "poll", r
    return body, r.json()["result"]["id"]


def dead_letters(sb, ws, **q):
    path = "/workspaces/%s/dead-letters" % ws
    if q:
        path += "?" + "&".join("%s=%s" % kv for kv in q.items())
    r = request(sb, "GET", path, token=sb.admin_token)
    assert r.status == 200, r
    assert r.body.endswith(b"\n")
    return r.json()["dead_letters"]


def wait_dead(sb, ws, n, timeout=6.0):
    deadline = time.time() + timeout
    while True:
        inbox_peek(sb, ws)  # any queue call settles expired messages
        dl = dead_letters(sb, ws)
        if len(dl) >= n or time.time() >= deadline:
            return dl
        time.sleep(0.2)


def mid(body):
    return body["params"]["message"]["messageId"]


def record(sb, ws, message_id):
    r = request(sb, "GET", "/workspaces/%s/messages/%s" % (ws, message_id),
                token=sb.admin_token)
    assert r.status == 200, r
    return r.json()


def test_list_replay_deliver(sb, agent):
    ws = unique_ws()
    assert register(sb, ws, delivery_mode="poll").status == 200
    first, _ = expiring(sb, ws, "first")
    time.sleep(0.2)  # distinct expiry times: the second dies second, so it is listed first
    second, task2 = expiring(sb, ws, "second")
    dl = wait_dead(sb, ws, 2)
    assert [d["message_id"] for d in dl] == [mid(second), mid(first)], "newest first"
    d = dl[0]
    assert d["dead_reason"] == "expired" and d["reason"] == "poll_mode", d
    assert d["request"] == second, "the original request, byte for byte as JSON"
    assert d["dead_at"] and d["task_id"] == task2
    assert len(dead_letters(sb, ws, max=1)) == 1
    assert request(sb, "GET", "/workspaces/%s/dead-letters?max=0" % ws,
                   token=sb.admin_token).status == 400
    assert task_call(sb, ws, "tasks/get", task2).json()["result"]["status"]["state"] == "failed"

    # a queued message is there already: the replayed one goes in front of it
    waiting = send_v03(text="waiting")
    assert a2a(sb, ws, waiting).status == 200
    r = request(sb, "POST", "/workspaces/%s/dead-letters/%s/replay" % (ws, d["id"]),
                token=sb.admin_token)
    assert r.status == 200, r
    j = r.json()
    assert j["status"] == "queued" and j["task_id"] == task2, j
    assert task_call(sb, ws, "tasks/get", task2).json()["result"]["status"]["state"] == \
        "submitted", "its task is submitted again"
    peek = inbox_peek(sb, ws, max=10).json()["messages"]
    assert [m["message_id"] for m in peek] == [mid(second), mid(waiting)], "front of the queue"
    assert peek[0]["delivery_count"] == 0
    exp = time.mktime(time.strptime(peek[0]["expires_at"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert exp - time.mktime(time.gmtime()) > 3600, "a fresh expiry (--queue-ttl-s)"
    assert [x["message_id"] for x in dead_letters(sb, ws)] == [mid(first)], "left the list"
    # replaying it again: it is not a dead letter any more
    again = request(sb, "POST", "/workspaces/%s/dead-letters/%s/replay" % (ws, d["id"]),
                    token=sb.admin_token)
    assert again.status == 409 and again.json()["error"]["code"] == "message_state", again

    # redelivered like any other: the agent registers push and gets both, in order
    ag = agent("ok")
    assert register(sb, ws, ag.url("/a2a")).status == 200
    posts = ag.wait_posts(2, timeout=5)
    assert [FakeAgent.header(p, "X-Switchboard-Message-Id") for p in posts] == \
        [mid(second), mid(waiting)]
    deadline = time.time() + 5
    while time.time() < deadline and record(sb, ws, mid(second))["state"] != "acked":
        time.sleep(0.1)
    rec = record(sb, ws, mid(second))
    assert rec["state"] == "acked", rec
    assert any(a["outcome"] == "replayed" for a in rec["attempts"]), rec["attempts"]


def test_replay_to_a_live_agent_is_pushed_at_once(sb, agent):
    ws = unique_ws()
    ag = agent("ok")
    assert register(sb, ws, delivery_mode="poll").status == 200
    body, _ = expiring(sb, ws, "late")
    d = wait_dead(sb, ws, 1)[0]
    assert register(sb, ws, ag.url("/a2a")).status == 200
    r = request(sb, "POST", "/workspaces/%s/dead-letters/%s/replay" % (ws, d["id"]),
                token=sb.admin_token)
    assert r.status == 200, r
    posts = ag.wait_posts(1, timeout=3)
    assert [FakeAgent.header(p, "X-Switchboard-Message-Id") for p in posts] == [mid(body)]


def test_purge(sb):
    ws = unique_ws()
    assert register(sb, ws, delivery_mode="poll").status == 200
    body, task = expiring(sb, ws, "doomed")
    d = wait_dead(sb, ws, 1)[0]
    path = "/workspaces/%s/dead-letters/%s" % (ws, d["id"])
    r = request(sb, "DELETE", path, token=sb.admin_token)
    assert r.status == 204, r
    assert dead_letters(sb, ws) == []
    rec = record(sb, ws, mid(body))
    assert rec["state"] == "purged", rec
    assert request(sb, "DELETE", path, token=sb.admin_token).status == 204, "idempotent"
    rr = request(sb, "POST", path + "/replay", token=sb.admin_token)
    assert rr.status == 409, rr
    assert request(sb, "DELETE", "/workspaces/%s/dead-letters/q_%s" % (ws, "0" * 24),
                   token=sb.admin_token).status == 404
    assert task_call(sb, ws, "tasks/get", task).json()["result"]["status"]["state"] == "failed"


def test_workspace_token_scope(sb):
    from harness import mint
    ws, other = unique_ws(), unique_ws()
    tok = mint(sb, ws)["token"]
    assert request(sb, "GET", "/workspaces/%s/dead-letters" % ws, token=tok).status == 200
    assert request(sb, "GET", "/workspaces/%s/dead-letters" % other, token=tok).status == 403
    assert request(sb, "GET", "/workspaces/%s/dead-letters" % ws).status == 401


def sbctl(sb, *args):
    env = dict(os.environ, SWITCHBOARD_URL="http://127.0.0.1:%d" % sb.port,
               SWITCHBOARD_ADMIN_TOKEN=sb.admin_token)
    p = subprocess.run([os.path.join(sb_bin_dir(), "sbctl")] + list(args), env=env,
                       capture_output=True, timeout=20)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def test_sbctl_dead_letters_replay_purge(sb, agent):
    ws = unique_ws()
    assert register(sb, ws, delivery_mode="poll").status == 200
    a, _ = expiring(sb, ws, "one")
    b, _ = expiring(sb, ws, "two")
    c, _ = expiring(sb, ws, "three")
    dl = wait_dead(sb, ws, 3)
    rc, out, err = sbctl(sb, "dead-letters", ws)
    assert rc == 0, err
    for x in (a, b, c):
        assert mid(x) in out, out
    assert "expired" in out
    rc, out, err = sbctl(sb, "--json", "dead-letters", ws)
    assert rc == 0 and len(json.loads(out)["dead_letters"]) == 3, (out, err)
    by_mid = {d["message_id"]: d["id"] for d in dl}
    rc, out, err = sbctl(sb, "purge", ws, by_mid[mid(a)])
    assert rc == 0, err
    rc, out, err = sbctl(sb, "replay", ws, by_mid[mid(b)])
    assert rc == 0, err
    assert [d["message_id"] for d in dead_letters(sb, ws)] == [mid(c)]
    rc, out, err = sbctl(sb, "replay", ws, "--all")
    assert rc == 0, err
    assert dead_letters(sb, ws) == []
    assert inbox_peek(sb, ws).json()["ready"] == 2
    rc, out, err = sbctl(sb, "replay", ws)
    assert rc != 0 and "ID" in err, err
