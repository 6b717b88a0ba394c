"""A2A push notifications for switchboard's own tasks (SPEC §4.3, issue 12), with a
receiver written with the standard library (the JS SDK side is test_notify_sdk.py)."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import harness
from harness import inbox_ack, inbox_lease, request, task_call, unique_ws
from promtext import scrape


class Receiver:
    """Records every POST; answers |status| (a list consumed front first, then 200)."""

    def __init__(self, statuses=()):
        self.got = []
        self.statuses = list(statuses)
        self.lock = threading.Lock()
        rec = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                with rec.lock:
                    st = rec.statuses.pop(0) if rec.statuses else 200
                    rec.got.append({"headers": dict(self.headers), "body": json.loads(body),
                                    "status": st})
                self.send_response(st)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def url(self):
        return "http://127.0.0.1:%d/hook" % self.port

    def wait(self, n, timeout=15.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                if len(self.got) >= n:
                    return list(self.got)
            time.sleep(0.05)
        with self.lock:
            raise AssertionError("wanted %d notifications, got %r" % (n, self.got))

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def receiver():
    made = []

    def make(statuses=()):
        r = Receiver(statuses)
        made.append(r)
        return r
    yield make
    for r in made:
        r.close()


def states(got, v10=False):
    if v10:
        return [g["body"]["task"]["status"]["state"] for g in got]
    return [g["body"]["status"]["state"] for g in got]


def test_v03_working_then_completed_with_token_and_credentials(sb, receiver):
    rc = receiver()
    ws = unique_ws()  # nothing registered: no_endpoint
    cfg = {"url": rc.url(), "token": "tok-123",
           "authentication": {"schemes": ["Bearer"], "credentials": "cred-xyz"}}
    body = harness.send_v03(extra_params={"configuration": {"pushNotificationConfig": cfg}})
    r = harness.a2a(sb, ws, body)
    assert r.status == 200 and r.header("X-Delivery-Mode") == "poll"
    task_id = r.json()["result"]["id"]
    (m,) = inbox_lease(sb, ws).json()["messages"]
    got = rc.wait(1)
    assert states(got) == ["working"]
    h = got[0]["headers"]
    assert h["X-A2A-Notification-Token"] == "tok-123"
    assert h["Authorization"] == "Bearer cred-xyz"
    assert got[0]["body"]["id"] == task_id and got[0]["body"]["kind"] == "task"
    result = {"kind": "message", "role": "agent", "messageId": "a1",
              "parts": [{"kind": "text", "text": "done"}]}
    assert inbox_ack(sb, ws, m["id"], result=result).status == 200
    got = rc.wait(2)
    assert states(got) == ["working", "completed"]
    assert got[1]["body"]["status"]["message"]["parts"][0]["text"] == "done"
    # The record lists the notification attempts.
    rec = request(sb, "GET", "/workspaces/%s/messages/%s" % (ws, body["params"]["message"]
                                                             ["messageId"]),
                  token=sb.admin_token).json()
    outcomes = [a["outcome"] for a in rec["attempts"]]
    assert outcomes.count("notified") == 2, rec["attempts"]
    # No third notification: completed is final.
    time.sleep(2.5)
    assert len(rc.got) == 2


def test_v10_shape_and_cancel(sb, receiver):
    rc = receiver()
    ws = unique_ws()
    body = harness.send_v10()
    body["params"]["configuration"] = {"taskPushNotificationConfig": {"url": rc.url(),
                                                                      "token": "t10"}}
    r = harness.a2a(sb, ws, body)
    task_id = r.json()["result"]["task"]["id"]
    c = task_call(sb, ws, "CancelTask", task_id)
    assert c.status == 200, c
    got = rc.wait(1)
    assert states(got, v10=True) == ["TASK_STATE_CANCELED"]
    assert got[0]["headers"]["Content-Type"].startswith("application/a2a+json")
    assert got[0]["headers"]["X-A2A-Notification-Token"] == "t10"


def test_failed_notifications_retry_and_count(sb, receiver):
    rc = receiver(statuses=[500, 503])
    ws = unique_ws()
    cfg = {"url": rc.url(), "token": "x"}
    body = harness.send_v03(extra_params={"configuration": {"pushNotificationConfig": cfg}})
    harness.a2a(sb, ws, body)
    inbox_lease(sb, ws)
    got = rc.wait(3, timeout=20)
    assert [g["status"] for g in got] == [500, 503, 200]
    assert states(got) == ["working"] * 3
    _, e = scrape(sb)
    assert e.value("switchboard_notifications_total", outcome="failed") >= 2
    assert e.value("switchboard_notifications_total", outcome="delivered") >= 1
    rec = request(sb, "GET", "/workspaces/%s/messages/%s" % (ws, body["params"]["message"]
                                                             ["messageId"]),
                  token=sb.admin_token).json()
    assert [a["outcome"] for a in rec["attempts"] if a["outcome"].startswith("notif")] == \
        ["notification_failed", "notification_failed", "notified"]


def test_notification_url_obeys_address_policy(make_sb, own_redis, receiver):
    # A Redis of its own: any instance's sweep may claim a task's notification, and the
    # suite's other instances allow loopback (once, under ASan, one of them sent it first)
    strict = make_sb(allow_loopback=False, redis_url=own_redis.url)
    rc = receiver()
    ws = unique_ws()
    cfg = {"url": rc.url()}
    body = harness.send_v03(extra_params={"configuration": {"pushNotificationConfig": cfg}})
    harness.a2a(strict, ws, body)
    inbox_lease(strict, ws)
    deadline = time.time() + 10
    while time.time() < deadline:
        rec = request(strict, "GET", "/workspaces/%s/messages/%s"
                      % (ws, body["params"]["message"]["messageId"]),
                      token=strict.admin_token).json()
        fails = [a for a in rec["attempts"] if a["outcome"] == "notification_failed"]
        if fails:
            break
        time.sleep(0.1)
    assert fails and fails[0]["reason"] == "upstream_forbidden", rec["attempts"]
    assert rc.got == []


def test_config_methods_on_switchboard_task(sb, receiver):
    rc = receiver()
    ws, sender = unique_ws(), unique_ws("sender")
    tok = harness.mint(sb, sender)["token"]
    r = harness.a2a(sb, ws, harness.send_v03(), token=tok)
    task_id = r.json()["result"]["id"]
    setp = {"taskId": task_id, "pushNotificationConfig": {
        "id": "c1", "url": rc.url(), "token": "k",
        "authentication": {"schemes": ["Bearer"], "credentials": "secret-cred"}}}
    s = harness.a2a(sb, ws, {"jsonrpc": "2.0", "id": 1, "method":
                             "tasks/pushNotificationConfig/set", "params": setp}, token=tok)
    assert s.json()["result"]["pushNotificationConfig"]["id"] == "c1", s.json()
    g = harness.a2a(sb, ws, {"jsonrpc": "2.0", "id": 2, "method":
                             "tasks/pushNotificationConfig/get",
                             "params": {"id": task_id, "pushNotificationConfigId": "c1"}},
                    token=tok)
    assert g.json()["result"]["pushNotificationConfig"]["url"] == rc.url()
    assert b"secret-cred" not in g.body
    lst = harness.a2a(sb, ws, {"jsonrpc": "2.0", "id": 3, "method":
                               "tasks/pushNotificationConfig/list", "params": {"id": task_id}},
                      token=tok)
    assert [c["pushNotificationConfig"]["id"] for c in lst.json()["result"]] == ["c1"]
    # The target workspace may not read the sender's configs.
    other = harness.mint(sb, ws)["token"]
    x = harness.a2a(sb, ws, {"jsonrpc": "2.0", "id": 4, "method":
                             "tasks/pushNotificationConfig/list", "params": {"id": task_id}},
                    token=other)
    assert x.json()["error"]["code"] == -32001
    # v1.0 names work on the same task.
    l10 = harness.a2a(sb, ws, {"jsonrpc": "2.0", "id": 5, "method":
                               "ListTaskPushNotificationConfigs", "params": {"taskId": task_id}},
                      token=tok)
    assert l10.json()["result"]["configs"][0]["id"] == "c1"
    # The set config is notified: lease -> working.
    inbox_lease(sb, ws)
    got = rc.wait(1)
    assert got[0]["headers"]["Authorization"] == "Bearer secret-cred"
    d = harness.a2a(sb, ws, {"jsonrpc": "2.0", "id": 6, "method":
                             "tasks/pushNotificationConfig/delete",
                             "params": {"id": task_id, "pushNotificationConfigId": "c1"}},
                    token=tok)
    assert "result" in d.json(), d.json()
    lst = harness.a2a(sb, ws, {"jsonrpc": "2.0", "id": 7, "method":
                               "tasks/pushNotificationConfig/list", "params": {"id": task_id}},
                      token=tok)
    assert lst.json()["result"] == []


def test_dead_letter_is_failed(make_sb, receiver):
    s = make_sb(extra_args=("--max-deliveries", "1"))
    rc = receiver()
    ws = unique_ws()
    body = harness.send_v03(extra_params={"configuration": {"pushNotificationConfig":
                                                            {"url": rc.url()}}})
    harness.a2a(s, ws, body)
    (m,) = inbox_lease(s, ws).json()["messages"]
    assert harness.inbox_nack(s, ws, m["id"]).status == 200
    got = rc.wait(2)
    assert states(got) == ["working", "failed"]
    assert got[1]["body"]["metadata"]["switchboard"]["reason"] == "no_endpoint"
