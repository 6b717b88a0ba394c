#!/usr/bin/env python3
"""fake_agent.py — a real HTTP/1.1 A2A agent for switchboard's integration tests.

    python3 tests/peers/fake_agent.py --port 0 --mode ok --record /tmp/agent.jsonl

It listens on 127.0.0.1 (loopback only), prints "READY <port>" on stdout once it accepts
connections, and then behaves according to --mode for every POST it receives:

  ok             200, a JSON-RPC response echoing the id; the result is an A2A Message
                 ("echo: <text>"), wrapped as {"message": ...} for v1.0 SendMessage
  card           the same as ok (the agent card is served in every mode, see below)
  jsonrpc_error  200 with a JSON-RPC error object
  status:NNN     HTTP status NNN with a small JSON body (404, 500, 401, 418, ...)
  hang           reads the request and never answers (until the peer closes, or
                 --hang-max-s passes, so no thread outlives its test for long)
  reset          reads the request, sends the first bytes of a status line, then closes
                 with SO_LINGER 0 so the peer sees an RST
  reset_now      reads the request and resets at once, without sending a byte
  garbage        answers bytes that are not HTTP, then closes
  notjson        200 with Content-Type application/json and a body that is not JSON
  notjsonrpc     200 with a JSON body that is not a JSON-RPC response
  slow[:S]       answers like ok after S seconds (default --delay, 1.0)

--serial: POSTs are answered one at a time (the others wait, counted in "inflight"), like
an agent that works on one message at a time.

--slow-first N (with slow): only the first N POSTs wait the delay, every later one is
answered at once: an agent slow for a while, so a test need not wait the delay for all.
--fast-first N (with slow): the first N POSTs are answered at once (an agent that slows
down after them); with --slow-first M, POSTs N+1 to M wait the delay.

--fail-after N (with ok or slow): the first N POSTs are answered as the mode says, every
later one with HTTP --fail-status (default 500) and a small JSON body: an agent that breaks
mid-way.

GET /.well-known/agent-card.json is answered with an agent card in every mode (so a
registration probe never hangs or fails because of the POST behaviour under test);
--card-url sets the URL the card advertises, --no-card answers that GET with 404. In ok
and slow modes, agent/getAuthenticatedExtendedCard and GetExtendedAgentCard answer the
card with the agent's own URL in additionalInterfaces too.
Any other GET is 404.

Every request is recorded before it is answered, as one JSON line appended to --record:
  {"event":"connect","conn":N,"peer_port":P,"time":T}            once per TCP connection
  {"event":"request","conn":N,"peer_port":P,"method","path","version",
   "headers":[[name,value],...],"body_b64","body" (text, lossy),
   "response_status","response_body_b64","time","inflight"}
("inflight": the POSTs being handled at that moment, this one included: concurrency)
so a test that has received switchboard's answer can already read what the agent saw,
count TCP connections (keep-alive reuse) and compare bodies byte for byte.

Only the standard library is used. The process exits on SIGTERM/SIGINT.
"""

import argparse
import base64
import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_lock = threading.Lock()
_conn_counter = [0]
_posts = {"inflight": 0, "seen": 0}
_serial = threading.Lock()


class Recorder:
    def __init__(self, path):
        self.path = path
        self.fh = open(path, "a", encoding="utf-8") if path else None

    def write(self, obj):
        if self.fh is None:
            return
        line = json.dumps(obj, ensure_ascii=True) + "\n"
        with _lock:
            self.fh.write(line)
            self.fh.flush()
            os.fsync(self.fh.fileno())


def parse_mode(mode, default_delay):
    """Returns (name, arg): ("status", 404), ("slow", 1.5), ("ok", None), ..."""
    if mode.startswith("status:"):
        return "status", int(mode.split(":", 1)[1])
    if mode.startswith("slow"):
        if ":" in mode:
            return "slow", float(mode.split(":", 1)[1])
        return "slow", default_delay
    if mode == "card":
        return "ok", None
    if mode.startswith("sse"):
        # "sse:N:GAP": N events GAP seconds apart, HTTP/1.1 chunked text/event-stream
        parts = mode.split(":")
        n = int(parts[1]) if len(parts) > 1 else 3
        gap = float(parts[2]) if len(parts) > 2 else 0.3
        return "sse", (n, gap)
    if mode in ("ok", "jsonrpc_error", "hang", "reset", "reset_now", "garbage",
                "notjson", "notjsonrpc"):
        return mode, None
    raise SystemExit("fake_agent: unknown mode %r" % mode)


def first_text(msg):
    parts = msg.get("parts") if isinstance(msg, dict) else None
    if isinstance(parts, list):
        for p in parts:
            if isinstance(p, dict) and isinstance(p.get("text"), str):
                return p["text"]
    return ""


def echo_result(req):
    """The result an A2A agent would give to a send: a Message echoing the text."""
    params = req.get("params") if isinstance(req.get("params"), dict) else {}
    msg = params.get("message") if isinstance(params.get("message"), dict) else {}
    mid = msg.get("messageId", "")
    text = first_text(msg)
    if req.get("method") in ("SendMessage", "SendStreamingMessage"):
        return {"message": {"messageId": "echo-%s" % mid, "role": "ROLE_AGENT",
                            "parts": [{"text": "echo: %s" % text}]}}
    return {"kind": "message", "role": "agent", "messageId": "echo-%s" % mid,
            "parts": [{"kind": "text", "text": "echo: %s" % text}]}


def make_handler(args, recorder, mode, mode_arg):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes
        server_version = "fake-agent/1"
        sys_version = ""

        def setup(self):
            super().setup()
            with _lock:
                _conn_counter[0] += 1
                self.conn_id = _conn_counter[0]
            recorder.write({"event": "connect", "conn": self.conn_id,
                            "peer_port": self.client_address[1], "time": time.time()})

        def log_message(self, fmt, *a):  # to stderr, which the harness keeps in a file
            sys.stderr.write("fake_agent[%d] conn=%d %s\n"
                             % (args.port_actual, self.conn_id, fmt % a))

        # ---- reading ---------------------------------------------------------------
        def read_body(self):
            te = (self.headers.get("Transfer-Encoding") or "").lower()
            if "chunked" in te:
                out = b""
                while True:
                    line = self.rfile.readline(65537)
                    if not line:
                        break
                    size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                    if size == 0:
                        while True:  # trailers
                            t = self.rfile.readline(65537)
                            if t in (b"\r\n", b"\n", b""):
                                break
                        break
                    out += self.rfile.read(size)
                    self.rfile.readline(65537)
                return out
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n > 0 else b""

        def record(self, body, status=None, response_body=None):
            recorder.write({
                "event": "request", "conn": self.conn_id,
                "peer_port": self.client_address[1], "method": self.command,
                "path": self.path, "version": self.request_version,
                "headers": [[k, v] for k, v in self.headers.items()],
                "body_b64": base64.b64encode(body).decode("ascii"),
                "body": body.decode("utf-8", "replace"),
                "response_status": status,
                "response_body_b64": (base64.b64encode(response_body).decode("ascii")
                                      if response_body is not None else None),
                "time": time.time(), "inflight": _posts["inflight"]})

        def send_bytes(self, status, body, ctype="application/json"):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for h in args.answer_header:
                name, _, value = h.partition(":")
                self.send_header(name.strip(), value.strip())
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()

        # ---- GET: the agent card ---------------------------------------------------
        def do_GET(self):
            body = b""
            if self.path.split("?", 1)[0] == "/.well-known/agent-card.json" and not args.no_card:
                out = json.dumps(self.card()).encode()
                self.record(body, 200, out)
                self.send_bytes(200, out)
                return
            out = b'{"error":"not found"}'
            self.record(body, 404, out)
            self.send_bytes(404, out)

        def card(self, extended=False):
            own = "http://127.0.0.1:%d/" % args.port_actual
            card = {
                "name": "fake-agent-%d" % args.port_actual,
                "description": "switchboard integration test peer",
                "url": args.card_url or "http://127.0.0.1:%d/" % args.port_actual,
                "version": "1.0.0",
                "protocolVersion": "0.3.0",
                "preferredTransport": "JSONRPC",
                "capabilities": {"streaming": False},
                "defaultInputModes": ["text/plain"],
                "defaultOutputModes": ["text/plain"],
                "skills": [{"id": "echo", "name": "echo", "description": "echoes",
                            "tags": ["test"]}],
            }
            if extended:  # the direct address, twice, as real agents leak it
                card["additionalInterfaces"] = [{"url": own, "transport": "JSONRPC"}]
                card["supportsAuthenticatedExtendedCard"] = True
            return card

        # ---- POST: the mode under test -----------------------------------------------
        def do_POST(self):
            with _lock:
                _posts["inflight"] += 1
                _posts["seen"] += 1
                seen = _posts["seen"]
            try:
                if args.serial:
                    with _serial:
                        self.answer_post(seen)
                else:
                    self.answer_post(seen)
            finally:
                with _lock:
                    _posts["inflight"] -= 1

        def answer_post(self, seen):
            body = self.read_body()
            try:
                req = json.loads(body.decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                req = None
            rid = req.get("id") if isinstance(req, dict) else None

            if args.fail_after is not None and seen > args.fail_after:
                out = json.dumps({"error": "fake agent broke after %d" % args.fail_after}).encode()
                self.record(body, args.fail_status, out)
                self.send_bytes(args.fail_status, out)
            elif mode in ("ok", "slow"):
                if req is None or not isinstance(req, dict):
                    out = json.dumps({"jsonrpc": "2.0", "id": None, "error": {
                        "code": -32700, "message": "fake agent: not JSON"}}).encode()
                elif req.get("method") in ("agent/getAuthenticatedExtendedCard",
                                           "GetExtendedAgentCard"):
                    out = json.dumps({"jsonrpc": "2.0", "id": rid,
                                      "result": self.card(extended=True)}).encode()
                else:
                    out = json.dumps({"jsonrpc": "2.0", "id": rid,
                                      "result": echo_result(req)}).encode()
                self.record(body, 200, out)
                if mode == "slow" and (args.slow_first is None or seen <= args.slow_first) \
                        and (args.fast_first is None or seen > args.fast_first):
                    time.sleep(mode_arg)
                self.send_bytes(200, out)
            elif mode == "sse":
                n, gap = mode_arg
                self.record(body, 200, None)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for i in range(n):
                    ev = {"jsonrpc": "2.0", "id": rid, "result": {
                        "kind": "status-update", "taskId": "t-1", "contextId": "c-1",
                        "status": {"state": "working"}, "final": i == n - 1,
                        "metadata": {"seq": i, "sent_at": time.time()}}}
                    chunk = ("data: %s\n\n" % json.dumps(ev)).encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                    if i < n - 1:
                        time.sleep(gap)
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            elif mode == "jsonrpc_error":
                out = json.dumps({"jsonrpc": "2.0", "id": rid, "error": {
                    "code": -32001, "message": "fake agent: task not found",
                    "data": {"fake": True}}}).encode()
                self.record(body, 200, out)
                self.send_bytes(200, out)
            elif mode == "status":
                out = json.dumps({"error": "fake agent answers %d" % mode_arg}).encode()
                self.record(body, mode_arg, out)
                self.send_bytes(mode_arg, out)
            elif mode == "notjson":
                out = b"<html><body>this is not JSON</body></html>"
                self.record(body, 200, out)
                self.send_bytes(200, out)
            elif mode == "notjsonrpc":
                out = b'{"hello":"world","not":"a JSON-RPC response"}'
                self.record(body, 200, out)
                self.send_bytes(200, out)
            elif mode == "garbage":
                out = b"\x16\x03\x01 SSH-2.0-garbage this is not HTTP at all\r\n\r\n\x00\xff"
                self.record(body, None, out)
                self.wfile.write(out)
                self.wfile.flush()
                self.close_connection = True
            elif mode in ("reset", "reset_now"):
                self.record(body, None, b"HTTP/1.1 2" if mode == "reset" else b"")
                if mode == "reset":
                    self.wfile.write(b"HTTP/1.1 2")
                    self.wfile.flush()
                    time.sleep(0.05)  # let the partial status line leave first
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True
            elif mode == "hang":
                self.record(body, None, None)
                deadline = time.time() + args.hang_max_s
                while time.time() < deadline:
                    r, _, _ = select.select([self.connection], [], [], 0.5)
                    if r:
                        try:
                            if not self.connection.recv(65536, socket.MSG_PEEK):
                                break  # the peer closed
                            self.connection.recv(65536)
                        except OSError:
                            break
                self.close_connection = True

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request, client_address):
        # A reset or a peer that went away is part of the tests; keep stderr readable.
        exc = sys.exc_info()[1]
        sys.stderr.write("fake_agent: %s from %s: %r\n" % (type(exc).__name__,
                                                            client_address, exc))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--mode", default="ok")
    ap.add_argument("--record", default=None, help="append JSON lines here")
    ap.add_argument("--delay", type=float, default=1.0, help="seconds, for mode slow")
    ap.add_argument("--hang-max-s", type=float, default=60.0)
    ap.add_argument("--card-url", default=None, help="URL the agent card advertises")
    ap.add_argument("--no-card", action="store_true")
    ap.add_argument("--slow-first", type=int, default=None,
                    help="only the first N POSTs are slow (mode slow)")
    ap.add_argument("--fast-first", type=int, default=None,
                    help="the first N POSTs are answered at once (mode slow)")
    ap.add_argument("--fail-after", type=int, default=None, help="POSTs answered before failing")
    ap.add_argument("--fail-status", type=int, default=500)
    ap.add_argument("--serial", action="store_true", help="answer one POST at a time")
    ap.add_argument("--answer-header", action="append", default=[],
                    help="'Name: value' added to every answer sent whole (repeatable)")
    args = ap.parse_args()

    mode, mode_arg = parse_mode(args.mode, args.delay)
    recorder = Recorder(args.record)
    args.port_actual = args.port
    httpd = Server(("127.0.0.1", args.port), make_handler(args, recorder, mode, mode_arg))
    args.port_actual = httpd.server_address[1]

    def stop(signum, frame):
        # shutdown() must not run on the serving thread; exit directly instead.
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sys.stdout.write("READY %d\n" % args.port_actual)
    sys.stdout.flush()
    httpd.serve_forever(poll_interval=0.2)


if __name__ == "__main__":
    main()
