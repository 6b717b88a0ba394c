#!/usr/bin/env python3
"""The platform side: send one chat message to a workspace's agent through switchboard
and get its answer, whichever way it comes. Python standard library only.

What a sender must handle (SPEC §4.2–4.3):

  200, X-Delivery-Mode: push   the agent's own JSON-RPC answer, relayed unchanged: done.
  200, X-Delivery-Mode: poll   switchboard could not push (X-Delivery-Reason says why) and
                               queued the message: the result is an A2A Task in state
                               `submitted` whose id (sbtask_…) is switchboard's. Ask
                               `tasks/get` for it through switchboard until it is
                               completed, failed or canceled (an inbox consumer or the
                               recovery drain delivers it meanwhile).
  503 + Retry-After            neither pushed nor queued (switchboard's Redis is away):
                               wait as told and send again with the SAME messageId, so
                               that a copy that did get queued is not queued twice.
  anything else                an error to report (400 invalid request, 401/403 token).

Usage:
    SWITCHBOARD_ADMIN_TOKEN=… python3 examples/platform-sender/send.py alice "hello" \\
        [--user user-42] [--url http://127.0.0.1:8080] [--timeout 120]

With the admin token the message is a chat (from the platform, for the end user named
by --user); with a workspace token in SWITCHBOARD_TOKEN it is a delegation from that
workspace. Prints one JSON object on stdout: {"mode","reason","message_id","task_id",
"state","text","answer"}; logs one JSON line per step on stderr. Exit status: 0 answered
(pushed, or the task completed), 1 the task failed/was canceled/timed out or the send was
refused, 2 usage.
"""

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid

FINAL = {"completed", "failed", "canceled", "rejected",
         "TASK_STATE_COMPLETED", "TASK_STATE_FAILED", "TASK_STATE_CANCELED", "TASK_STATE_REJECTED"}


def log(event, **fields):
    fields = dict(time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), event=event, **fields)
    sys.stderr.write(json.dumps(fields) + "\n")
    sys.stderr.flush()


def post(url, token, body, headers=None, timeout=330.0):
    """POSTs JSON; returns (status, headers, decoded body or None). Never raises for an
    HTTP status; raises OSError when switchboard cannot be reached."""
    h = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
    h.update(headers or {})
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, hdrs, raw = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        status, hdrs, raw = e.code, e.headers, e.read()
    try:
        data = json.loads(raw) if raw.strip() else None
    except ValueError:
        data = None
    return status, hdrs, data


def text_of(obj):
    """Text parts of an A2A Message (v0.3 or v1.0 parts), or of a Task's status message,
    then its artifacts."""
    if not isinstance(obj, dict):
        return None
    if "message" in obj and isinstance(obj["message"], dict) and "parts" not in obj:
        obj = obj["message"]  # v1.0 SendMessage result {"message": …}
    if "task" in obj and isinstance(obj["task"], dict):
        obj = obj["task"]  # v1.0 {"task": …}
    if "parts" in obj:
        texts = [p.get("text") for p in obj["parts"] if isinstance(p.get("text"), str)]
        return " ".join(texts) if texts else None
    status = obj.get("status") or {}
    if isinstance(status.get("message"), dict):
        t = text_of(status["message"])
        if t:
            return t
    for a in obj.get("artifacts") or []:
        t = text_of(a)
        if t:
            return t
    return None


def task_of(result):
    return result.get("task") if isinstance(result.get("task"), dict) else result


def send(args, token):
    a2a = "%s/workspaces/%s/a2a" % (args.url.rstrip("/"), args.workspace)
    message_id = args.message_id or "m-" + uuid.uuid4().hex  # once: every retry reuses it
    body = {"jsonrpc": "2.0", "id": 1, "method": "message/send", "params": {"message": {
        "kind": "message", "role": "user", "messageId": message_id,
        "parts": [{"kind": "text", "text": args.text}]}}}
    headers = {"X-Switchboard-User": args.user} if args.user else {}
    deadline = time.time() + args.timeout
    out = {"mode": None, "reason": None, "message_id": message_id, "task_id": None,
           "state": None, "text": None, "answer": None}

    # 1. Send, retrying 503s with the same messageId.
    attempt = 0
    while True:
        attempt += 1
        body["id"] = attempt
        try:
            status, hdrs, data = post(a2a, token, body, headers, timeout=max(1.0, deadline - time.time()))
        except OSError as e:
            if time.time() >= deadline:
                log("gave_up", message_id=message_id, error=str(e))
                return out, 1
            log("unreachable", message_id=message_id, attempt=attempt, error=str(e), sleep_s=1)
            time.sleep(1)
            continue
        log("sent", message_id=message_id, attempt=attempt, status=status,
            mode=hdrs.get("X-Delivery-Mode"), reason=hdrs.get("X-Delivery-Reason"))
        if status == 503:
            ra = hdrs.get("Retry-After")
            wait = int(ra) if ra and ra.isdigit() else 1
            if time.time() + wait >= deadline:
                log("gave_up", message_id=message_id, status=503)
                out["answer"] = data
                return out, 1
            time.sleep(wait)
            continue
        break

    out["mode"] = hdrs.get("X-Delivery-Mode")
    out["reason"] = hdrs.get("X-Delivery-Reason")
    out["answer"] = data
    if status != 200 or not isinstance(data, dict) or "result" not in data:
        log("refused", message_id=message_id, status=status, body=data)
        return out, 1
    if out["mode"] == "push":
        # The agent's answer: a Message, or a Task of the agent's own (tasks/get for it goes
        # to the agent through switchboard like any other call).
        out["text"] = text_of(data["result"])
        t = task_of(data["result"])
        out["state"] = (t.get("status") or {}).get("state") if t.get("kind") == "task" else None
        return out, 0

    # 2. Queued: follow switchboard's task until it ends.
    task = task_of(data["result"])
    out["task_id"] = task["id"]
    out["state"] = task["status"]["state"]
    poll = {"jsonrpc": "2.0", "id": "get", "method": "tasks/get", "params": {"id": task["id"]}}
    while out["state"] not in FINAL:
        if time.time() >= deadline:
            log("timed_out", message_id=message_id, task_id=task["id"], state=out["state"])
            return out, 1
        time.sleep(args.poll_interval)
        try:
            status, hdrs, data = post(a2a, token, poll, timeout=15)
        except OSError as e:
            log("unreachable", task_id=task["id"], error=str(e))
            continue
        if status == 503:
            continue  # Redis away: the task is still there, ask again later
        if status != 200 or not isinstance(data, dict) or "result" not in data:
            log("tasks_get_failed", task_id=task["id"], status=status, body=data)
            return out, 1
        t = task_of(data["result"])
        if t["status"]["state"] != out["state"]:
            log("task_state", task_id=task["id"], state=t["status"]["state"])
        out["state"] = t["status"]["state"]
        out["answer"] = data
    out["text"] = text_of(t)
    return out, 0 if out["state"] in ("completed", "TASK_STATE_COMPLETED") else 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workspace")
    ap.add_argument("text")
    ap.add_argument("--url", default=os.environ.get("SWITCHBOARD_URL", "http://127.0.0.1:8080"))
    ap.add_argument("--user", help="the end user, for X-Switchboard-User (chats)")
    ap.add_argument("--message-id", help="default: a fresh one")
    ap.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds")
    ap.add_argument("--poll-interval", type=float, default=1.0, help="seconds between tasks/get")
    args = ap.parse_args(argv)
    token = os.environ.get("SWITCHBOARD_TOKEN") or os.environ.get("SWITCHBOARD_ADMIN_TOKEN")
    if not token:
        ap.error("set SWITCHBOARD_ADMIN_TOKEN (chat) or SWITCHBOARD_TOKEN (delegation)")
    out, code = send(args, token)
    print(json.dumps(out))
    return code


if __name__ == "__main__":
    sys.exit(main())
