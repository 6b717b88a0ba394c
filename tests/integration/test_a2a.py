"""POST /workspaces/{ws}/a2a: what the agent receives, what the caller gets back, what is
refused before any push, and keep-alive reuse upstream (SPEC §4.2)."""

import json

import pytest

import harness
from harness import (FakeAgent, a2a, assert_decision_logged, assert_pushed, mint, register,
                     request, send_v03, send_v10, unique_ws)

# A body with odd spacing, key order, escapes and raw UTF-8: relayed byte for byte.
ODD_BODY = (b'{ "params" : {"metadata":{"z":1,"a":[1,2.50,"x"]},'
            b'"message":{"parts":[{"text":"h\\u00e9llo \xc3\xa9t\xc3\xa9 \\"q\\"","kind":"text"}],'
            b'"messageId":"MID-odd-1","role":"user","kind":"message"}},\n'
            b'  "method":"message/send", "id":  42 ,"jsonrpc":"2.0"   }')


def registered(sb, agent, mode="ok", *args):
    ag = agent(mode, *args)
    ws = unique_ws()
    r = register(sb, ws, ag.url("/a2a/v1"))
    assert r.status == 200, r
    return ag, ws, r.json()["inbound_secret"]


def test_chat_reaches_agent_with_router_headers(sb, agent):
    ag, ws, secret = registered(sb, agent)
    r = a2a(sb, ws, ODD_BODY)
    (rec,) = ag.wait_posts(1)
    assert_pushed(r, rec)
    assert rec["path"] == "/a2a/v1"
    assert FakeAgent.body_bytes(rec) == ODD_BODY, "the body must reach the agent unchanged"
    assert FakeAgent.header(rec, "Authorization") == "Bearer %s" % secret
    assert FakeAgent.header(rec, "Content-Type").split(";")[0].strip() == "application/json"
    assert FakeAgent.header(rec, "X-Switchboard-Kind") == "chat"
    assert FakeAgent.header(rec, "X-Switchboard-Message-Id") == "MID-odd-1"
    assert FakeAgent.header(rec, "X-Switchboard-Source"), "a chat names its source too"
    assert FakeAgent.header(rec, "A2A-Version") is None, "no A2A-Version was given"
    j = r.json()
    assert j["id"] == 42 and j["result"]["parts"][0]["text"].startswith("echo: h\u00e9llo")
    # Of the agent's answer headers only Content-Type, A2A-Version and Cache-Control are
    # relayed (its Server and Date are not), and X-Delivery-Mode says how it went.
    assert r.header("Content-Type").split(";")[0].strip() == "application/json"
    assert r.header("X-Delivery-Mode") == "push"
    assert r.header("Server") is None, "the agent's Server header is not relayed"
    assert len(r.headers.get_all("Date") or []) == 1, "one Date, switchboard's own"
    assert_decision_logged(sb, "MID-odd-1", ws, None, kind="chat")


def test_answer_headers_relayed_are_the_kept_ones(sb, agent):
    """Of an agent's answer headers exactly Content-Type, A2A-Version and Cache-Control come
    back to the caller (the first of each); any other, its Date and Server included, stays
    at switchboard, which adds X-Delivery-Mode and its own Date."""
    ws = unique_ws()
    ag = agent("ok", "--answer-header", "A2A-Version: 0.3",
               "--answer-header", "cache-control: no-store",
               "--answer-header", "Cache-Control: private",
               "--answer-header", "X-Agent-Internal: secret")
    assert register(sb, ws, ag.url("/a2a")).status == 200
    r = a2a(sb, ws, send_v03())
    assert r.status == 200 and r.header("X-Delivery-Mode") == "push", r
    assert r.header("A2A-Version") == "0.3"
    assert r.headers.get_all("Cache-Control") == ["no-store"], "the first, once"
    assert r.header("X-Agent-Internal") is None
    assert r.header("Server") is None
    assert len(r.headers.get_all("Date") or []) == 1


def test_caller_token_never_reaches_the_agent(sb, agent):
    ag, ws, secret = registered(sb, agent)
    src = unique_ws()
    tok = mint(sb, src)["token"]
    assert a2a(sb, ws, send_v03(), token=tok).status == 200
    assert a2a(sb, ws, send_v03()).status == 200
    for rec in ag.wait_posts(2):
        auth = FakeAgent.header_values(rec, "Authorization")
        assert auth == ["Bearer %s" % secret], auth
        assert tok not in json.dumps(rec) and sb.admin_token not in json.dumps(rec)


def test_delegation_source_is_the_token_workspace(sb, agent):
    ag, ws, _ = registered(sb, agent)
    src = unique_ws()
    tok = mint(sb, src)["token"]
    body = send_v03(extra_params={"metadata": {"source": "ws-impostor",
                                               "switchboard": {"source": "ws-impostor"}}})
    r = a2a(sb, ws, body, token=tok, headers={"X-Switchboard-Source": "ws-impostor",
                                              "X-Switchboard-Kind": "chat"})
    (rec,) = ag.wait_posts(1)
    assert_pushed(r, rec)
    assert FakeAgent.header_values(rec, "X-Switchboard-Kind") == ["delegation"]
    assert FakeAgent.header_values(rec, "X-Switchboard-Source") == [src]
    assert json.loads(FakeAgent.body_bytes(rec)) == body, "the body itself is not rewritten"
    assert_decision_logged(sb, body["params"]["message"]["messageId"], ws, None,
                           kind="delegation", source=src)


def test_a2a_version_passed_through(sb, agent):
    ag, ws, _ = registered(sb, agent)
    r = a2a(sb, ws, send_v03(), headers={"A2A-Version": "0.3"})
    assert r.status == 200, r
    (rec,) = ag.wait_posts(1)
    assert FakeAgent.header(rec, "A2A-Version") == "0.3"


def test_jsonrpc_error_from_agent_is_a_delivered_answer(sb, agent):
    ag, ws, _ = registered(sb, agent, "jsonrpc_error")
    body = send_v03()
    r = a2a(sb, ws, body)
    (rec,) = ag.wait_posts(1)
    assert_pushed(r, rec)
    assert r.header("X-Delivery-Reason") is None
    assert r.json()["error"]["code"] == -32001
    assert_decision_logged(sb, body["params"]["message"]["messageId"], ws, None)


@pytest.mark.parametrize("make,method", [(send_v03, "message/send"), (send_v10, "SendMessage")])
def test_v03_and_v10_sends_are_pushed(sb, agent, make, method):
    ag, ws, _ = registered(sb, agent)
    body = make(text="versions")
    r = a2a(sb, ws, body, headers={"A2A-Version": "1.0" if method == "SendMessage" else "0.3"})
    (rec,) = ag.wait_posts(1)
    assert_pushed(r, rec)
    assert json.loads(FakeAgent.body_bytes(rec))["method"] == method
    assert FakeAgent.header(rec, "X-Switchboard-Message-Id") == \
        body["params"]["message"]["messageId"]


def test_other_methods_are_passed_through(sb, agent):
    # a method switchboard does not interpret (and a task id it never issued) goes to the agent
    ag, ws, _ = registered(sb, agent)
    body = {"jsonrpc": "2.0", "id": "x1", "method": "x-vendor/ping"}
    r = a2a(sb, ws, body)
    (rec,) = ag.wait_posts(1)
    assert_pushed(r, rec)
    assert FakeAgent.header(rec, "X-Switchboard-Message-Id"), "every push carries an id"


# ---- refused before any push ------------------------------------------------------------

VALID_MSG = {"kind": "message", "role": "user", "messageId": "m1",
             "parts": [{"kind": "text", "text": "hi"}]}

INVALID = [
    # (name, raw body, JSON-RPC code, id echoed or None)
    ("truncated", b'{"jsonrpc":"2.0","id":1,', -32700, None),
    ("not_json", b"hello there", -32700, None),
    ("empty", b"", -32700, None),
    ("trailing_garbage", json.dumps({"jsonrpc": "2.0", "id": 1, "method": "message/send",
                                     "params": {"message": VALID_MSG}}).encode() + b"}}",
     -32700, None),
    ("no_jsonrpc", json.dumps({"id": 1, "method": "message/send",
                               "params": {"message": VALID_MSG}}).encode(), -32600, 1),
    ("jsonrpc_1", json.dumps({"jsonrpc": "1.0", "id": 1, "method": "message/send",
                              "params": {"message": VALID_MSG}}).encode(), -32600, 1),
    ("batch", json.dumps([{"jsonrpc": "2.0", "id": 1, "method": "message/send",
                           "params": {"message": VALID_MSG}}]).encode(), -32600, None),
    ("method_not_string", json.dumps({"jsonrpc": "2.0", "id": 1, "method": 5}).encode(),
     -32600, 1),
    ("no_method", json.dumps({"jsonrpc": "2.0", "id": 1}).encode(), -32600, 1),
    ("no_id", json.dumps({"jsonrpc": "2.0", "method": "message/send",
                          "params": {"message": VALID_MSG}}).encode(), -32600, None),
    ("scalar", b"42", -32600, None),
    ("no_params", json.dumps({"jsonrpc": "2.0", "id": 7, "method": "message/send"}).encode(),
     -32602, 7),
    ("no_message", json.dumps({"jsonrpc": "2.0", "id": 7, "method": "message/send",
                               "params": {}}).encode(), -32602, 7),
    ("no_message_id", json.dumps({"jsonrpc": "2.0", "id": "s", "method": "message/send",
                                  "params": {"message": {"role": "user", "parts": []}}}).encode(),
     -32602, "s"),
    ("empty_message_id", json.dumps({"jsonrpc": "2.0", "id": 7, "method": "message/send",
                                     "params": {"message": dict(VALID_MSG, messageId="")}}
                                    ).encode(), -32602, 7),
    ("v10_no_message_id", json.dumps({"jsonrpc": "2.0", "id": 8, "method": "SendMessage",
                                      "params": {"message": {"role": "ROLE_USER",
                                                             "parts": [{"text": "x"}]}}}
                                     ).encode(), -32602, 8),
    ("stream_no_message_id", json.dumps({"jsonrpc": "2.0", "id": 9, "method": "message/stream",
                                         "params": {"message": {"role": "user",
                                                                "parts": []}}}).encode(),
     -32602, 9),
]


@pytest.fixture(scope="module")
def validation_target(sb, workdir):
    """One ok agent registered for all validation cases; nothing may reach it."""
    ag = harness.FakeAgent(workdir, "ok").start()
    ws = unique_ws("val")
    try:
        assert register(sb, ws, ag.url()).status == 200
        yield ag, ws
    finally:
        ag.stop()


@pytest.mark.parametrize("name,raw,code,rid", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_requests_are_answered_by_switchboard(sb, validation_target, name, raw, code,
                                                      rid):
    ag, ws = validation_target
    r = a2a(sb, ws, raw)
    assert r.status == 400, "%s: %r" % (name, r)
    assert (r.header("Content-Type") or "").startswith("application/json"), r
    j = r.json()
    assert j.get("jsonrpc") == "2.0" and "result" not in j, j
    assert j["error"]["code"] == code, "%s: want %d, got %r" % (name, code, j)
    assert isinstance(j["error"].get("message"), str)
    assert j.get("id", "missing") == rid, "%s: id should be %r: %r" % (name, rid, j)
    assert r.header("X-Delivery-Mode") != "push"
    assert ag.posts() == [], "%s reached the agent" % name


# Issue 8: jansson quotes the offending input in its error text and switchboard cut that
# text inside a UTF-8 character; building the -32700 answer then aborted the daemon. Each
# body below is invalid JSON whose error text ends in (or holds) a multi-byte character.
BAD_UTF8_BODIES = [
    ("escape_before_e_acute", bytes.fromhex("7b2278223a225cc3a9227d")),  # {"x":"\Ã©"}
    ("escape_before_emoji", b'{"x":"\\\xf0\x9f\x98\x80"}'),
    ("invalid_utf8_in_string", b'{"jsonrpc":"2.0","id":1,"method":"\xff\xfe"}'),
    ("cut_multibyte_at_end", b'{"x":"\xc3'),
    ("long_multibyte_token", b'{"x":' + "\u00e9".encode() * 300 + b"}"),
]


@pytest.mark.parametrize("name,raw", BAD_UTF8_BODIES, ids=[c[0] for c in BAD_UTF8_BODIES])
def test_invalid_json_around_multibyte_chars_is_32700_and_daemon_serves(sb, name, raw):
    tok = mint(sb, unique_ws("src"))["token"]
    r = a2a(sb, "any", raw, token=tok)
    assert r.status == 400, "%s: %r" % (name, r)
    j = r.json()  # the answer itself must be valid JSON (and so valid UTF-8)
    assert j["error"]["code"] == -32700, j
    assert isinstance(j["error"]["message"], str) and j["error"]["message"], j
    assert sb.alive(), "switchboard died on %s\n%s" % (name, sb.diagnostics())
    again = a2a(sb, "any", b"hello", token=tok)
    assert again.status == 400 and again.json()["error"]["code"] == -32700, again
    # The rejection is logged as one JSON line whose detail is valid UTF-8.
    assert any(l.get("mode") == "rejected" and l.get("code") == -32700
               for l in sb.log_lines()), "no rejection logged for %s" % name


def test_body_over_max_body_bytes_is_413(module_make_sb, agent):
    small = module_make_sb(["--max-body-bytes", "1024"], name="sb-small")
    ag = agent("ok")
    ws = unique_ws()
    assert register(small, ws, ag.url()).status == 200
    big = send_v03(text="x" * 1500)
    r = a2a(small, ws, big)
    assert r.status == 413, r
    fits = send_v03(text="y" * 600)
    assert len(json.dumps(fits)) < 1024
    assert_pushed(a2a(small, ws, fits))
    (rec,) = ag.wait_posts(1)
    assert b"y" * 600 in FakeAgent.body_bytes(rec), "only the small message reached the agent"


def test_chunked_body_over_max_body_bytes_is_413(module_make_sb, agent):
    small = module_make_sb(["--max-body-bytes", "1024"], name="sb-small-chunked")
    ag = agent("ok")
    ws = unique_ws()
    assert register(small, ws, ag.url()).status == 200
    body = json.dumps(send_v03(text="z" * 3000)).encode()
    with harness.RawHTTP(small.port) as c:
        head = ("POST /workspaces/%s/a2a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                % (ws, small.admin_token)).encode()
        c.send(head)
        try:
            for i in range(0, len(body), 500):
                part = body[i:i + 500]
                c.send(b"%x\r\n%s\r\n" % (len(part), part))
            c.send(b"0\r\n\r\n")
        except OSError:
            pass  # switchboard may answer and close before the whole body is sent
        resp = c.read_response()
    assert resp.status == 413, resp.raw_head
    assert ag.posts() == []


# ---- keep-alive upstream ------------------------------------------------------------------

def test_sequential_pushes_reuse_upstream_connections(sb, agent):
    ag, ws, _ = registered(sb, agent)
    for i in range(20):
        r = a2a(sb, ws, send_v03(text="ka %d" % i))
        assert r.status == 200 and r.header("X-Delivery-Mode") == "push", (i, r)
    posts = ag.wait_posts(20)
    assert len(posts) == 20
    conns = sorted(set(p["conn"] for p in posts))
    assert len(conns) <= sb.threads, (
        "20 sequential pushes used %d TCP connections (want <= %d, one per worker): %s"
        % (len(conns), sb.threads, conns))
