#!/usr/bin/env python3
"""Writes the generated seed corpora of the fuzz targets (tests/fuzz/):

  tests/corpus/queue/gen-*     Redis replies of the queue and delivery-stats scripts, in
                               RESP, behind the selector byte fuzz_queue.c reads;
  tests/corpus/http2/gen-*     h2c client sessions (preface, SETTINGS, HPACK HEADERS,
                               DATA, RST_STREAM, PING, WINDOW_UPDATE, GOAWAY, bad frames);
  tests/corpus/upstream/gen-*  agent answers fuzz_upstream.c serves (selector byte, then
                               the bytes on the wire), HTTP/1.1 and HTTP/2;
  tests/corpus/card/gen-*      registry records with agent cards, behind a Host line.

Hand-written, so each shape the parsers distinguish has a seed; captured traffic lives
in the cap-* files (tools/capture-corpus.sh). Deterministic: re-running rewrites the
same files. Run from the repository root."""

import json
import os
import struct

ROOT = "tests/corpus"


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "gen-" + name), "wb") as f:
        f.write(data)


# ---- RESP ---------------------------------------------------------------------------

def resp(v):
    if v is None:
        return b"$-1\r\n"
    if isinstance(v, bool):
        return b":%d\r\n" % int(v)
    if isinstance(v, int):
        return b":%d\r\n" % v
    if isinstance(v, str):
        v = v.encode()
    if isinstance(v, bytes):
        return b"$%d\r\n%s\r\n" % (len(v), v)
    if isinstance(v, Err):
        return b"-" + v.msg + b"\r\n"
    return b"*%d\r\n" % len(v) + b"".join(resp(x) for x in v)


class Err:
    def __init__(self, msg):
        self.msg = msg


REQUEST = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "message/send",
                      "params": {"message": {"messageId": "m-1", "role": "user",
                                             "parts": [{"kind": "text", "text": "hi"}]}}})


def record(i=1, state="queued", reason="no_endpoint", version="v03", extra=None):
    f = ["q_%016x" % i, "sbt_q_%016x" % i, "m-%d" % i, "ctx-%d" % i, "chat", "admin",
         "message/send", version, state, reason, "nothing registered", "0", "1",
         "1764590400000", "1765195200000", "1764590400123", "0", "", "", "", "0.3", "",
         '[{"at_ms":1764590400000,"outcome":"fallback","reason":"no_endpoint"}]', REQUEST]
    if extra:
        for k, v in extra.items():
            f[k] = v
    return f


# Selectors: fuzz_queue.c's op_kind order, then the stats reader. Queue replies end with
# the dead letters made (expired, max_deliveries) and the queue index update (+/- ms, 0).
APPEND, LEASE, PEEK, ACK, NACK, GET, CANCEL, ATTEMPT, LOOKUP, STATS = range(10)


def queue_corpus():
    rec = record()
    cases = {
        "append-new": (APPEND, [0, rec, 0, 0, 1764590400000]),
        "append-duplicate": (APPEND, [1, rec, 0, 0, 0]),
        "ack": (ACK, [0, record(state="acked", extra={18: '{"kind":"task"}'}), 0, 0,
                       -1764590400000]),
        "ack-forbidden": (ACK, [2, record(state="leased"), 0, 0, 0]),
        "get-missing": (GET, [-1, [], 0, 0, 0]),
        "get-dead": (GET, [0, record(state="dead", extra={17: "max_deliveries", 12: "5"}), 0, 1,
                            0]),
        "get-v10": (GET, [0, record(version="v10", extra={6: "SendMessage", 20: "1.0"}), 0, 0,
                           0]),
        "cancel": (CANCEL, [0, record(state="canceled"), 0, 0, 0]),
        "nack-error-field": (NACK, [0, record(extra={19: '{"code":-32000,"message":"x"}'}), 0, 0,
                                    1764590400000]),
        "attempt": (ATTEMPT, [0, rec, 0, 0, 0]),
        "lease-two": (LEASE, [[record(1, "leased", extra={16: "1764590460000"}),
                               record(2, "leased")], 3, 60000, 1764590400000, 0, 0, 0]),
        "lease-empty": (LEASE, [[], 0, -1, 1764590400000, 2, 1, -1764590400000]),
        "peek": (PEEK, [[rec], 1, 0, 1764590400000, 0, 0, 0]),
        "lookup": (LOOKUP, [0, [["queue", "queue", rec],
                                ["push", "push", '{"message_id":"m-1","mode":"push"}']], 0, 0,
                      0]),
        "redis-error": (GET, Err(b"NOSCRIPT No matching script. Please use EVAL.")),
        "redis-error-utf8": (APPEND, Err(b"ERR bad \xc3")),
        "wrong-shape": (GET, [0, ["q_1"], 0, 0, 0]),
        "string": (LEASE, "OK"),
        "stats": (STATS, [["ws-1", 3, 1, 0, 1764590400000,
                           ["pushes", "10", "fallbacks", "2", "fb_no_endpoint", "2",
                            "last_reason", "no_endpoint", "last_detail", "nothing registered",
                            "last_push_duration_ms", "12.5", "fail_status", "503"]]]),
        "stats-bad": (STATS, [["ws-1", 1]]),
    }
    for name, (sel, reply) in cases.items():
        put("queue", name, bytes([sel]) + resp(reply))
    put("queue", "resp3-map", bytes([GET]) + b"%1\r\n+a\r\n:1\r\n")
    put("queue", "truncated", bytes([LEASE]) + resp([[record()], 1, 0, 1, 0, 0, 0])[:-40])


# ---- HTTP/2 -------------------------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST, SETTINGS, PUSH, PING, GOAWAY, WINUP, CONT = range(10)


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", stream) + payload


def hpack(headers):
    """Literal header fields without indexing, new names, no Huffman."""
    out = b""
    for k, v in headers:
        k, v = k.encode(), v if isinstance(v, bytes) else v.encode()
        assert len(k) < 127 and len(v) < 127
        out += b"\x00" + bytes([len(k)]) + k + bytes([len(v)]) + v
    return out


def req_headers(method, path, extra=()):
    return [(":method", method), (":scheme", "http"), (":authority", "127.0.0.1:8080"),
            (":path", path)] + list(extra)


def settings(*pairs):
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def h2_corpus():
    start = PREFACE + settings((3, 100), (4, 1 << 20))
    ack = frame(SETTINGS, 1, 0)
    body = REQUEST.encode()
    a2a = req_headers("POST", "/j/workspaces/ws-1/a2a",
                      [("content-type", "application/json"), ("authorization", "Bearer x"),
                       ("content-length", str(len(body)))])
    cases = {
        "get": start + ack + frame(HEADERS, 0x5, 1, hpack(req_headers("GET", "/healthz"))),
        "post-json": start + frame(HEADERS, 0x4, 1, hpack(a2a)) + frame(DATA, 0x1, 1, body),
        "stream": start + frame(HEADERS, 0x5, 1, hpack(req_headers("GET", "/s/events"))),
        "held-then-reset": start + frame(HEADERS, 0x5, 1, hpack(req_headers("GET", "/h/x"))) +
        frame(RST, 0, 1, struct.pack(">I", 8)),
        "two-streams": start + frame(HEADERS, 0x5, 1, hpack(req_headers("GET", "/a"))) +
        frame(HEADERS, 0x5, 3, hpack(req_headers("GET", "/j"))),
        "continuation": start + frame(HEADERS, 0x1, 1, hpack(req_headers("GET", "/c")[:2])) +
        frame(CONT, 0x4, 1, hpack(req_headers("GET", "/c")[2:])),
        "ping-winup-goaway": start + frame(PING, 0, 0, b"12345678") +
        frame(WINUP, 0, 0, struct.pack(">I", 65535)) +
        frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0)),
        "priority": start + frame(PRIORITY, 0, 1, struct.pack(">IB", 0, 16)) +
        frame(HEADERS, 0x25, 1, struct.pack(">IB", 0, 16) + hpack(req_headers("GET", "/p"))),
        "padded-data": start + frame(HEADERS, 0x4, 1, hpack(req_headers("POST", "/j"))) +
        frame(DATA, 0x9, 1, b"\x03abc\x00\x00\x00"),
        "utf8-path": start + frame(HEADERS, 0x5, 1, hpack(req_headers("GET", b"/\\\xc3")) +
                                   b""),
        "big-body": start + frame(HEADERS, 0x4, 1, hpack(req_headers("POST", "/j"))) +
        b"".join(frame(DATA, 0, 1, b"x" * 16000) for _ in range(4)) + frame(DATA, 1, 1),
        "rapid-reset": start + b"".join(
            frame(HEADERS, 0x5, s, hpack(req_headers("GET", "/h"))) +
            frame(RST, 0, s, struct.pack(">I", 8)) for s in range(1, 40, 2)),
        "bad-frame-size": start + frame(PING, 0, 0, b"123"),
        "data-on-idle": start + frame(DATA, 1, 7, b"x"),
        "push-promise": start + frame(PUSH, 0x4, 1, struct.pack(">I", 2)),
        "no-preface": settings((3, 1)),
        "indexed-static": start + frame(HEADERS, 0x5, 1, b"\x82\x86\x84\x41\x0f127.0.0.1:8080"),
    }
    for name, data in cases.items():
        put("http2", name, data)
    put("http1", "h2c-prior-knowledge", cases["get"])


# ---- upstream answers ----------------------------------------------------------------
# Selector bits (fuzz_upstream.c): 0x1 stream through on_head, 0x2 GET, 0x4/0x8 protocol.

def upstream_corpus():
    ok = b'{"jsonrpc":"2.0","id":1,"result":{"kind":"message"}}'
    cases = {
        "ok": (0, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d"
               b"\r\n\r\n%s" % (len(ok), ok)),
        "chunked": (0, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
                    b"0\r\nTrailer: x\r\n\r\n"),
        "sse-streamed": (1, b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n0\r\n\r\n"),
        "close-delimited": (0, b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + ok),
        "100-continue": (0, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"
                         b"Content-Length: 2\r\n\r\n{}"),
        "204": (0, b"HTTP/1.1 204 No Content\r\n\r\n"),
        "404": (0, b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found"),
        "503-retry": (0, b"HTTP/1.1 503 Busy\r\nRetry-After: 5\r\nContent-Length: 0\r\n\r\n"),
        "get-card": (2, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 13\r\n\r\n{\"name\":\"a\"}\n"),
        "garbage": (0, b"HELLO\r\n\r\n"),
        "short-body": (0, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc"),
        "both-lengths": (0, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        "invalid-utf8-header": (0, b"HTTP/1.1 500 \xc3\r\nX-Why: \xff\xfe\r\n"
                                b"Content-Length: 0\r\n\r\n"),
        "h2c-answer": (8, settings((3, 100)) + frame(SETTINGS, 1, 0) +
                       frame(HEADERS, 0x4, 1, b"\x88" + hpack([("content-type",
                                                               "application/json")])) +
                       frame(DATA, 1, 1, ok)),
        "h2c-rst": (8, settings() + frame(RST, 0, 1, struct.pack(">I", 2))),
        "h2c-goaway": (8, settings() + frame(GOAWAY, 0, 0, struct.pack(">II", 0, 1))),
    }
    for name, (sel, data) in cases.items():
        put("upstream", name, bytes([sel]) + data)


# ---- agent cards --------------------------------------------------------------------

def card_corpus():
    base = {"workspace_id": "ws-1", "delivery_mode": "push", "protocol": "auto",
            "inbound_secret": "sec", "url": "http://10.0.0.7:8000/a2a", "lease_s": 60,
            "registered_at_ms": 1764590400000}
    cards = {
        "v03": {"name": "agent", "url": "http://10.0.0.7:8000/a2a",
                "additionalInterfaces": [{"url": "http://10.0.0.7:8000/a2a",
                                          "transport": "JSONRPC"},
                                         {"transport": "GRPC"}]},
        "v10": {"name": "agent", "supportedInterfaces": [{"url": "http://x/a2a",
                                                          "protocolBinding": "JSONRPC"}]},
        "no-url": {"name": "agent"},
        "weird-lists": {"url": 5, "additionalInterfaces": {"url": "x"},
                        "supportedInterfaces": [1, None, {"url": None}]},
    }
    hosts = {"v03": b"switchboard.example:8080", "v10": b"", "no-url": b"h\xc3",
             "weird-lists": b"bad host/"}
    for name, card in cards.items():
        rec = dict(base, agent_card=card)
        put("card", name, hosts[name] + b"\n" + json.dumps(rec).encode())
    put("card", "poll-no-card", b"h\n" + json.dumps(dict(base, delivery_mode="poll",
                                                          url=None)).encode())
    put("card", "bad-record", b"h\n" + json.dumps(dict(base, lease_s="x")).encode())


if __name__ == "__main__":
    queue_corpus()
    h2_corpus()
    upstream_corpus()
    card_corpus()
