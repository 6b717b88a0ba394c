"""Push notifications and resubscribe with the official A2A JS SDK (@a2a-js/sdk, pinned by
examples/js-agent's lockfile) on the caller's side: tests/peers/sdk_peer.mjs sends through
the SDK's JSON-RPC transports (v0.3 and v1.0) with a push-notification config, receives
switchboard's notifications (v1.0 parsed by the SDK's StreamResponse), and resubscribes
to a switchboard task through the SDK's streaming client. Needs node and `npm ci` in
examples/js-agent (`make test-deps`): skipped locally without them, failed under CI."""

import json
import os
import queue
import shutil
import subprocess
import threading
import time

import pytest

import harness
from harness import inbox_ack, inbox_lease, unique_ws

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PEER = os.path.join(ROOT, "tests", "peers", "sdk_peer.mjs")
SDK = os.path.join(ROOT, "examples", "js-agent", "node_modules", "@a2a-js", "sdk")


def need_node():
    node = shutil.which("node")
    what = None if node else "node (Debian package nodejs)"
    if node and not os.path.isdir(SDK):
        what = "@a2a-js/sdk (make test-deps runs npm ci in examples/js-agent)"
    if what:
        if os.environ.get("CI"):
            pytest.fail(what + " missing — CI must have it")
        pytest.skip(what + " missing")
    return node


class Peer:
    """sdk_peer.mjs as a process; its stdout lines arrive on a queue."""

    def __init__(self, *args):
        self.proc = harness.spawn([need_node(), PEER] + list(args), "sdk_peer",
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.proc.stdout:
            self.lines.put(raw.decode().rstrip("\n"))
        self.lines.put(None)

    def next(self, tag, timeout=20.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                line = self.lines.get(timeout=max(0.05, deadline - time.time()))
            except queue.Empty:
                break
            if line is None:
                err = self.proc.stderr.read().decode()
                raise AssertionError("sdk_peer ended before %s: %s" % (tag, err))
            if line == tag or line.startswith(tag + " "):
                rest = line[len(tag):].strip()
                return json.loads(rest) if rest else None
        raise AssertionError("no %s line within %.0f s" % (tag, timeout))

    def close(self):
        try:
            self.proc.wait(timeout=10)
        finally:
            harness.kill_group(self.proc)


def a2a_url(sb, ws):
    return "http://127.0.0.1:%d/workspaces/%s/a2a" % (sb.port, ws)


@pytest.mark.parametrize("version", ["v03", "v10"])
def test_sdk_caller_hears_working_and_completed(sb, version):
    ws = unique_ws()  # nothing registered: the send falls back, the task is switchboard's
    p = Peer("notify", version, a2a_url(sb, ws), sb.admin_token)
    try:
        task = p.next("TASK")
        task_id = task["id"] if "id" in task else task["task"]["id"]
        assert task_id.startswith("sbtask_"), task
        (m,) = inbox_lease(sb, ws).json()["messages"]
        n1 = p.next("NOTIFY")
        assert n1["state"] in ("working", "TASK_STATE_WORKING"), n1
        assert n1["headers"]["x-a2a-notification-token"] == "sdk-token"
        assert n1["headers"]["authorization"] == "Bearer sdk-cred"
        answer = {"kind": "message", "role": "agent", "messageId": "ans-1",
                  "parts": [{"kind": "text", "text": "all done"}]}
        assert inbox_ack(sb, ws, m["id"], result=answer).status == 200
        n2 = p.next("NOTIFY")
        assert n2["state"] in ("completed", "TASK_STATE_COMPLETED"), n2
        body = n2["body"]["task"] if version == "v10" else n2["body"]
        assert body["id"] == task_id
        assert "all done" in json.dumps(body["status"]), body
    finally:
        p.close()
    assert p.proc.returncode == 0


@pytest.mark.parametrize("version", ["v03", "v10"])
def test_sdk_resubscribe_streams_until_the_task_ends(sb, version):
    ws = unique_ws()
    body = harness.send_v10() if version == "v10" else harness.send_v03()
    r = harness.a2a(sb, ws, body)
    res = r.json()["result"]
    task_id = res["task"]["id"] if version == "v10" else res["id"]
    p = Peer("subscribe", version, a2a_url(sb, ws), sb.admin_token, task_id)
    try:
        first = p.next("EVENT")
        assert first["kind"] == "task" and first["id"] == task_id, first
        assert first["state"] == "TASK_STATE_SUBMITTED", first
        (m,) = inbox_lease(sb, ws).json()["messages"]
        ev = p.next("EVENT")
        assert ev["kind"] == "statusUpdate" and ev["state"] == "TASK_STATE_WORKING", ev
        assert inbox_ack(sb, ws, m["id"]).status == 200
        ev = p.next("EVENT")
        assert ev["state"] == "TASK_STATE_COMPLETED", ev
        p.next("END")
    finally:
        p.close()
    assert p.proc.returncode == 0
