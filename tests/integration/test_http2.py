"""HTTP/2 with prior knowledge (h2c) on --listen, next to HTTP/1.1 on the same port (SPEC §1).

Real curl and h2load against a real switchboard and real fake agents: the same routes,
the same answers as HTTP/1.1, limits (413), concurrency, and the graceful stop with HTTP/2
connections open.
"""

import re
import signal
import subprocess
import threading
import time

from curl_client import FRAME_GOAWAY, RawH2, curl, goaways
from harness import LOOPBACK, FakeAgent, register, request, send_v03, unique_ws


def url(sb, path):
    return "http://%s:%d%s" % (LOOPBACK, sb.port, path)


def auth(sb):
    return [("Authorization", "Bearer %s" % sb.admin_token)]


def test_healthz_over_h2c_and_http1_on_one_port(sb):
    r = curl(url(sb, "/healthz"))
    assert r.status == 200 and r.version == "2", r
    assert r.json() == {"status": "ok"} or r.json().get("status") == "ok", r
    assert r.header("content-length") == str(len(r.body)), r
    # The same port still speaks HTTP/1.1.
    assert request(sb, "GET", "/healthz").status == 200
    r11 = curl(url(sb, "/healthz"), proto="1.1")
    assert r11.status == 200 and r11.version == "1.1", r11


def test_router_answers_over_h2c(sb):
    r = curl(url(sb, "/no/such/route"))
    assert r.status == 404 and r.version == "2", r
    r = curl(url(sb, "/registry/" + unique_ws()))
    assert r.status == 401 and r.version == "2", r
    assert r.json()["error"]["code"], r


def test_a2a_push_through_fake_agent_over_h2c(sb, agent):
    ag = agent("ok")
    ws = unique_ws()
    assert register(sb, ws, ag.url("/a2a")).status == 200
    body = send_v03(text="over h2")
    r = curl(url(sb, "/workspaces/%s/a2a" % ws), method="POST", body=body, headers=auth(sb))
    assert r.status == 200 and r.version == "2", r
    assert r.header("x-delivery-mode") == "push", r
    j = r.json()
    assert j["id"] == body["id"] and "echo: over h2" in j["result"]["parts"][0]["text"], j
    (rec,) = ag.wait_posts(1)
    assert FakeAgent.header(rec, "X-Switchboard-Message-Id") == \
        body["params"]["message"]["messageId"]
    assert r.body == FakeAgent.response_bytes(rec), "the agent's body is relayed unchanged"


def test_a2a_multiplexed_pushes_over_one_connection(sb, agent, tmp_path):
    ag = agent("ok")
    ws = unique_ws()
    assert register(sb, ws, ag.url("/a2a")).status == 200
    data = tmp_path / "body.json"
    data.write_text('{"jsonrpc":"2.0","id":1,"method":"message/send","params":{"message":'
                    '{"kind":"message","role":"user","messageId":"m-h2load","parts":'
                    '[{"kind":"text","text":"many"}]}}}')
    p = subprocess.run(["h2load", "-n", "60", "-c", "1", "-m", "10", "-d", str(data),
                        "-H", "content-type: application/json",
                        "-H", "authorization: Bearer %s" % sb.admin_token,
                        url(sb, "/workspaces/%s/a2a" % ws)],
                       capture_output=True, timeout=60)
    out = p.stdout.decode()
    assert p.returncode == 0, out + p.stderr.decode()
    assert re.search(r"60 succeeded, 0 failed, 0 errored", out), out
    assert re.search(r"status codes: 60 2xx", out), out
    assert len(ag.wait_posts(60, timeout=10)) == 60


def test_h2load_healthz_no_failures(sb):
    p = subprocess.run(["h2load", "-n", "2000", "-c", "4", "-m", "32", url(sb, "/healthz")],
                       capture_output=True, timeout=60)
    out = p.stdout.decode()
    assert p.returncode == 0, out + p.stderr.decode()
    assert "2000 succeeded, 0 failed, 0 errored, 0 timeout" in out, out
    assert "status codes: 2000 2xx" in out, out


def test_oversized_body_is_413_over_h2(make_sb):
    sb = make_sb(extra_args=["--max-body-bytes", "1024"], name="sb-h2-413")
    r = curl(url(sb, "/workspaces/%s/a2a" % unique_ws()), method="POST", body=b"x" * 4096,
             headers=auth(sb) + [("Content-Type", "application/json")])
    assert r.status == 413 and r.version == "2", r
    assert r.json()["error"]["code"] == "body_too_large", r
    # Without content-length the limit is found while reading, with the same answer.
    r = curl(url(sb, "/workspaces/%s/a2a" % unique_ws()), method="POST", body=b"y" * 100000,
             headers=auth(sb) + [("Content-Type", "application/json")],
             extra=["-H", "Transfer-Encoding: chunked"])
    assert r.status == 413, r
    # The server is fine afterwards.
    assert curl(url(sb, "/healthz")).status == 200


def test_sigterm_with_open_h2_connections_exits_0(make_sb, agent):
    sb = make_sb(name="sb-h2-stop")
    ag = agent("slow:1.5")
    ws = unique_ws()
    assert register(sb, ws, ag.url()).status == 200
    idle = RawH2(sb.port)  # an idle HTTP/2 connection, open across the stop
    first, _ = idle.frames_until_closed(0.3)
    assert first and first[0][0] == 4, "the server's SETTINGS come first: %r" % first
    result = {}

    def call():
        try:
            result["r"] = curl(url(sb, "/workspaces/%s/a2a" % ws), method="POST",
                               body=send_v03(text="in flight over h2"), headers=auth(sb))
        except Exception as e:  # reported below
            result["e"] = e

    th = threading.Thread(target=call, daemon=True)
    th.start()
    assert ag.wait_posts(1, timeout=5.0), "the push never reached the slow agent"
    t0 = time.time()
    sb.signal(signal.SIGTERM)

    frames, eof = idle.frames_until_closed(5.0)
    idle.close()
    ga = goaways(frames)
    assert eof, "the idle HTTP/2 connection was not closed after SIGTERM: %r" % frames
    assert ga and ga[-1][1] == 0, "GOAWAY NO_ERROR expected before the close: %r" % frames
    assert any(t == FRAME_GOAWAY for t, _, _, _ in frames)

    th.join(timeout=15)
    assert not th.is_alive(), "the in-flight h2 call never finished"
    assert "e" not in result, "the in-flight h2 call failed: %r" % result.get("e")
    r = result["r"]
    assert r.status == 200 and r.header("x-delivery-mode") == "push", r
    assert b"echo: in flight over h2" in r.body

    code = sb.proc.wait(timeout=10)
    assert code == 0, "exit code after a graceful stop: %r" % code
    assert time.time() - t0 < 8.0
    sb.stop()
