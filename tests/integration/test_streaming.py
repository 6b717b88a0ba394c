"""Event streams (text/event-stream) relayed as they arrive (SPEC §4.2), from an HTTP/1.1
agent (chunked) to HTTP/1.1 and HTTP/2 callers. The agent stamps each event with the time
it sent it; the first event must reach the caller before the agent sent the last one."""

import json
import socket
import subprocess
import time

from harness import LOOPBACK, register, send_v03, unique_ws

EVENTS, GAP_S = 3, 0.5


def _stream_body():
    body = send_v03(text="stream me")
    body["method"] = "message/stream"
    return body


def _events(blob):
    out = []
    for line in blob.decode("utf-8", "replace").splitlines():
        if line.startswith("data: "):
            out.append(json.loads(line[len("data: "):]))
    return out


def _check(received):
    """|received|: [(time received, event)] in arrival order."""
    assert [e["result"]["metadata"]["seq"] for _, e in received] == list(range(EVENTS)), received
    first_at = received[0][0]
    last_sent = received[-1][1]["result"]["metadata"]["sent_at"]
    assert first_at < last_sent, (
        "the first event reached the caller %.3fs after the agent sent the last one: "
        "the stream was buffered" % (first_at - last_sent))


def test_sse_from_http1_agent_to_http1_caller(sb, agent):
    ag = agent("sse:%d:%s" % (EVENTS, GAP_S))
    ws = unique_ws()
    assert register(sb, ws, ag.url()).status == 200
    raw = json.dumps(_stream_body()).encode()
    s = socket.create_connection((LOOPBACK, sb.port), timeout=10)
    received, buf, seen = [], b"", 0
    try:
        s.sendall(b"POST /workspaces/%s/a2a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                  b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                  % (ws.encode(), sb.admin_token.encode(), len(raw), raw))
        deadline = time.time() + 10
        while len(received) < EVENTS and time.time() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            now = time.time()
            evs = _events(buf)
            for e in evs[seen:]:
                received.append((now, e))
            seen = len(evs)
    finally:
        s.close()
    head = buf.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith("HTTP/1.1 200"), head
    assert "x-delivery-mode: push" in head.lower(), head
    assert "text/event-stream" in head.lower(), head
    _check(received)


def test_sse_from_http1_agent_to_http2_caller(sb, agent):
    ag = agent("sse:%d:%s" % (EVENTS, GAP_S))
    ws = unique_ws()
    assert register(sb, ws, ag.url()).status == 200
    p = subprocess.Popen(
        ["curl", "-sS", "-N", "--http2-prior-knowledge", "-X", "POST",
         "-H", "Authorization: Bearer %s" % sb.admin_token,
         "-H", "Content-Type: application/json", "--data-binary", json.dumps(_stream_body()),
         "--max-time", "10", "http://%s:%d/workspaces/%s/a2a" % (LOOPBACK, sb.port, ws)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    received = []
    try:
        for line in iter(p.stdout.readline, b""):
            if line.startswith(b"data: "):
                received.append((time.time(), json.loads(line[len(b"data: "):])))
            if len(received) == EVENTS:
                break
    finally:
        p.wait(timeout=15)
    assert p.returncode == 0, p.stderr.read()
    _check(received)


def test_caller_leaving_mid_stream_stops_the_agent_stream_at_once(sb, agent):
    """A caller that goes away cancels the upstream request: switchboard ends the stream
    as soon as the caller is gone, not when the (slow) agent sends its next event."""
    from harness import decision_lines
    ag = agent("sse:3:3")
    ws = unique_ws()
    assert register(sb, ws, ag.url()).status == 200
    body = _stream_body()
    raw = json.dumps(body).encode()
    s = socket.create_connection((LOOPBACK, sb.port), timeout=10)
    s.sendall(b"POST /workspaces/%s/a2a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
              b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
              % (ws.encode(), sb.admin_token.encode(), len(raw), raw))
    buf = b""
    while b"data: " not in buf:
        chunk = s.recv(65536)
        assert chunk, "the stream closed before its first event"
        buf += chunk
    s.close()
    left_at = time.time()
    mid = body["params"]["message"]["messageId"]
    line = None
    while time.time() - left_at < 2.0 and line is None:
        lines = [ln for ln in decision_lines(sb, mid) if "went away" in ln.get("detail", "")]
        line = lines[-1] if lines else None
        time.sleep(0.05)
    assert line is not None, "the stream was not ended within 2 s of the caller leaving " \
                             "(the agent's next event comes after 3 s)"
    assert line["mode"] == "push", line
