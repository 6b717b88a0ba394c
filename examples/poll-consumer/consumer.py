#!/usr/bin/env python3
"""A poll-mode inbox consumer for switchboard, Python standard library only.

An agent that cannot take pushes (behind NAT, a batch worker, a laptop) registers in
poll mode and drains its workspace's queue itself. The loop every consumer needs:

    lease (long-poll)  GET  /workspaces/{ws}/inbox?max=&wait_s=&lease_s=
    handle             your code, on each message's original JSON-RPC request
    ack with result    POST /workspaces/{ws}/inbox/{id}/ack   {"result": <A2A Message>}
    nack on failure    POST /workspaces/{ws}/inbox/{id}/nack  (redelivered at once,
                       until --max-deliveries, then a dead letter)

and two rules: back off on 503 for as long as `Retry-After` says (switchboard's Redis
is away), and finish each message well within its lease (else it is delivered again:
handling must be idempotent). The sender of a queued message sees the result through
`tasks/get` on the task id it was answered with (examples/platform-sender).

Usage:
    SWITCHBOARD_URL=http://127.0.0.1:8080 SWITCHBOARD_TOKEN=<workspace token> \\
        python3 examples/poll-consumer/consumer.py --workspace alice [--register-poll]

Options: --register-poll registers the workspace in poll mode first (otherwise it keeps
whatever registration it has: a push-mode agent's fallbacks can be consumed too);
--max-messages N stops after N messages handled (acked or nacked); --wait-s, --lease-s,
--batch tune the lease. Logs one JSON line per event on stderr; stops on SIGTERM/SIGINT
after the message in hand.

The handler here answers "echo: <text>" and fails (nack) on a text starting with
"fail", to show both paths; replace handle() with your agent's work.
"""

import argparse
import json
import os
import random
import signal
import sys
import time
import urllib.error
import urllib.request
import uuid

STOP = False
BUSY = False  # a leased message is in hand: finish it before stopping


def log(event, **fields):
    fields = dict(time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), event=event, **fields)
    sys.stderr.write(json.dumps(fields) + "\n")
    sys.stderr.flush()


class HTTPStatus(Exception):
    def __init__(self, status, body, retry_after):
        super().__init__("HTTP %d: %s" % (status, body[:200]))
        self.status = status
        self.body = body
        self.retry_after = retry_after


class Switchboard:
    def __init__(self, url, token):
        self.url = url.rstrip("/")
        self.token = token

    def call(self, method, path, body=None, timeout=15.0):
        """Returns the decoded JSON answer of a 2xx; raises HTTPStatus otherwise, OSError
        (URLError) when switchboard cannot be reached."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": "Bearer " + self.token, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
                return json.loads(raw) if raw.strip() else None
        except urllib.error.HTTPError as e:
            raw = e.read().decode("utf-8", "replace")
            ra = e.headers.get("Retry-After")
            raise HTTPStatus(e.code, raw, int(ra) if ra and ra.isdigit() else None) from None


# ---- your agent's work -----------------------------------------------------------------

def message_text(request):
    """The text parts of an A2A send, v0.3 (`kind: text`) or v1.0 (`text`) parts alike."""
    msg = (request.get("params") or {}).get("message") or {}
    return " ".join(p["text"] for p in msg.get("parts", []) if isinstance(p.get("text"), str))


def handle(message):
    """Works on one leased message; returns the A2A Message to ack it with, or raises to
    nack it. |message| is the SPEC §4.4 object; message["request"] is the original
    JSON-RPC request, byte for byte as the sender wrote it."""
    request = message["request"]
    text = message_text(request)
    if text.startswith("fail"):
        raise RuntimeError("cannot handle %r" % text)
    msg = (request.get("params") or {}).get("message") or {}
    reply = {"kind": "message", "role": "agent", "messageId": str(uuid.uuid4()),
             "parts": [{"kind": "text", "text": "echo: " + text}]}
    if msg.get("contextId"):
        reply["contextId"] = msg["contextId"]
    return reply


# ---- the loop --------------------------------------------------------------------------

def consume(sb, ws, args):
    handled = 0
    backoff = 1.0
    while not STOP and (args.max_messages is None or handled < args.max_messages):
        n = args.batch if args.max_messages is None else min(args.batch, args.max_messages - handled)
        q = "?max=%d&wait_s=%d&lease_s=%d" % (n, args.wait_s, args.lease_s)
        try:
            lease = sb.call("GET", "/workspaces/%s/inbox%s" % (ws, q), timeout=args.wait_s + 15)
            backoff = 1.0
        except HTTPStatus as e:
            if e.status == 503:
                # Redis is away: the queue cannot be read. Wait as told, plus jitter so
                # that many consumers do not come back in the same instant.
                wait = (e.retry_after or backoff) + random.uniform(0, 0.5)
                log("inbox_unavailable", status=503, retry_after=e.retry_after, sleep_s=round(wait, 2))
                time.sleep(wait)
                backoff = min(backoff * 2, 30.0)
                continue
            if e.status in (401, 403, 404):
                log("inbox_refused", status=e.status, body=e.body.strip())
                return 1
            log("inbox_error", status=e.status, body=e.body.strip()[:200], sleep_s=backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
            continue
        except OSError as e:  # switchboard restarting, or a network fault
            log("inbox_unreachable", error=str(e), sleep_s=backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
            continue

        global BUSY
        for m in lease.get("messages", []):
            if STOP:
                break  # the rest of the batch returns when its lease ends
            BUSY = True
            qid = m["id"]
            try:
                result = handle(m)
            except Exception as e:  # noqa: BLE001 — any failure of the work is a nack
                try:
                    r = sb.call("POST", "/workspaces/%s/inbox/%s/nack" % (ws, qid))
                    log("nacked", id=qid, message_id=m["message_id"], error=str(e),
                        status=r.get("status"), delivery_count=r.get("delivery_count"))
                except (HTTPStatus, OSError) as ne:
                    # The lease ends by itself and the message comes back: nothing lost.
                    log("nack_failed", id=qid, error=str(ne))
                handled += 1
                BUSY = False
                continue
            try:
                r = sb.call("POST", "/workspaces/%s/inbox/%s/ack" % (ws, qid), {"result": result})
                log("acked", id=qid, message_id=m["message_id"], task_id=r.get("task_id"),
                    source=m["source"], reason=m["reason"], delivery_count=m["delivery_count"])
            except (HTTPStatus, OSError) as e:
                # Not acked: it is delivered again after its lease, so handle() must be
                # idempotent (the message_id identifies a repeat).
                log("ack_failed", id=qid, error=str(e))
            handled += 1
            BUSY = False
        BUSY = False
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default=os.environ.get("SWITCHBOARD_URL", "http://127.0.0.1:8080"))
    ap.add_argument("--workspace", default=os.environ.get("WORKSPACE_ID"))
    ap.add_argument("--register-poll", action="store_true",
                    help="register the workspace in poll mode before consuming")
    ap.add_argument("--batch", type=int, default=10, help="messages per lease (1..100)")
    ap.add_argument("--wait-s", type=int, default=30, help="long-poll wait (0..60)")
    ap.add_argument("--lease-s", type=int, default=60, help="time to handle a batch")
    ap.add_argument("--max-messages", type=int, default=None, help="stop after N messages")
    args = ap.parse_args(argv)
    token = os.environ.get("SWITCHBOARD_TOKEN")
    if not token or not args.workspace:
        ap.error("SWITCHBOARD_TOKEN (environment) and --workspace (or WORKSPACE_ID) are required")

    def on_signal(signum, frame):
        global STOP
        STOP = True
        log("stopping", signal=signum)
        if not BUSY:
            raise SystemExit(0)  # idle or waiting on a long-poll: nothing in hand
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    sb = Switchboard(args.url, token)
    if args.register_poll:
        while True:
            try:
                r = sb.call("POST", "/registry/register",
                            {"workspace_id": args.workspace, "delivery_mode": "poll"})
                log("registered", workspace=args.workspace, delivery_mode=r["delivery_mode"])
                break
            except HTTPStatus as e:
                if e.status != 503:
                    log("register_refused", status=e.status, body=e.body.strip())
                    return 1
                time.sleep(e.retry_after or 1)
            except OSError as e:
                log("register_unreachable", error=str(e))
                time.sleep(1)
    log("consuming", workspace=args.workspace, url=args.url)
    return consume(sb, args.workspace, args)


if __name__ == "__main__":
    sys.exit(main())
