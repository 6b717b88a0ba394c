"""Small things operators trip on (issue 12): --version, HEAD on every GET route, a
newline after every JSON body, the token list, the process_* series."""

import json
import subprocess
import time

import pytest

import harness
from harness import RawHTTP, register, request, unique_ws
from promtext import parse as parse_metrics


def test_version_flags():
    for name in ("switchboard", "sbctl"):
        out = subprocess.run([harness.sb_bin_dir() + "/" + name, "--version"],
                             capture_output=True, text=True, timeout=10)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(name + " ") and out.stdout.strip().split()[1], out.stdout


def _raw(port, method, path, token=None):
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: 127.0.0.1"]
    if token:
        lines.append("Authorization: Bearer %s" % token)
    with RawHTTP(port) as c:
        c.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        return c.read_response(head_request=(method == "HEAD"))


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/registry/{ws}",
                                  "/workspaces/{ws}/delivery", "/delivery",
                                  "/admin/workspaces/{ws}/tokens",
                                  "/workspaces/{ws}/inbox/peek"])
def test_head_answers_like_get_without_body(sb, agent, path):
    ws = unique_ws()
    assert register(sb, ws, agent("ok").url()).status == 200
    p = path.replace("{ws}", ws)
    # The HEAD sits between two GETs: bodies that hold a time (the probe's age_s, uptimes)
    # may change length between requests, but the HEAD's length is then one of the GETs'.
    g = _raw(sb.port, "GET", p, sb.admin_token)
    h = _raw(sb.port, "HEAD", p, sb.admin_token)
    g2 = _raw(sb.port, "GET", p, sb.admin_token)
    assert g.status == h.status == g2.status == 200, (g.raw_head, h.raw_head)
    assert h.header("Content-Type") == g.header("Content-Type")
    if g.header("Content-Length") is not None and p != "/metrics":
        assert h.header("Content-Length") in (g.header("Content-Length"),
                                              g2.header("Content-Length")), \
            (h.raw_head, g.raw_head, g2.raw_head)
    # The HEAD answer carried no body: the next response on the connection parses cleanly.
    with RawHTTP(sb.port) as c:
        req = ("HEAD %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n"
               "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" % (p, sb.admin_token)).encode()
        c.send(req)
        assert c.read_response(head_request=True).status == 200
        assert c.read_response().status == 200


def test_head_on_post_only_route_is_405_and_allow_lists_head(sb):
    ws = unique_ws()
    r = request(sb, "HEAD", "/workspaces/%s/a2a" % ws, token=sb.admin_token)
    assert r.status == 405
    r = request(sb, "PUT", "/registry/%s" % ws, token=sb.admin_token)
    assert r.status == 405 and "HEAD" in r.header("Allow"), r.header("Allow")


def test_every_json_body_ends_with_newline(sb, agent):
    ws = unique_ws()
    assert register(sb, ws, agent("ok").url()).status == 200
    for method, path, body in [("GET", "/registry/%s" % ws, None),
                               ("GET", "/workspaces/%s/delivery" % ws, None),
                               ("GET", "/nope", None),
                               ("GET", "/workspaces/%s/inbox/peek" % ws, None),
                               ("POST", "/workspaces/%s/a2a" % ws, b"{bad"),
                               ("GET", "/admin/workspaces/%s/tokens" % ws, None)]:
        r = request(sb, method, path, body=body, token=sb.admin_token)
        assert r.header("Content-Type").startswith("application/json"), (path, r)
        assert r.body.endswith(b"\n"), (path, r.body[-40:])
        json.loads(r.body)


def test_token_list_shows_ids_and_times_never_tokens(sb):
    ws = unique_ws()
    minted = []
    for _ in range(2):
        r = request(sb, "POST", "/admin/workspaces/%s/tokens" % ws, token=sb.admin_token)
        assert r.status == 201
        minted.append(r.json())
    r = request(sb, "GET", "/admin/workspaces/%s/tokens" % ws, token=sb.admin_token)
    assert r.status == 200, r
    toks = r.json()["tokens"]
    assert sorted(t["token_id"] for t in toks) == sorted(m["token_id"] for m in minted)
    assert all(t["created_at"].endswith("Z") for t in toks)
    assert [t["created_at"] for t in toks] == sorted(t["created_at"] for t in toks)
    assert set(toks[0]) == {"token_id", "created_at"}
    for m in minted:
        assert m["token"].encode() not in r.body
    # A workspace token may not list, not even its own workspace's.
    r = request(sb, "GET", "/admin/workspaces/%s/tokens" % ws, token=minted[0]["token"])
    assert r.status == 403
    request(sb, "DELETE", "/admin/workspaces/%s/tokens/%s" % (ws, minted[0]["token_id"]),
            token=sb.admin_token)
    r = request(sb, "GET", "/admin/workspaces/%s/tokens" % ws, token=sb.admin_token)
    assert [t["token_id"] for t in r.json()["tokens"]] == [minted[1]["token_id"]]
    r = request(sb, "GET", "/admin/workspaces/%s/tokens" % unique_ws(), token=sb.admin_token)
    assert r.json() == {"tokens": []}


def test_process_metrics(sb):
    r = request(sb, "GET", "/metrics")
    m = parse_metrics(r.body.decode())
    assert m.value("process_resident_memory_bytes") > 1e6
    assert m.value("process_open_fds") >= 5
    assert m.value("process_max_fds") >= m.value("process_open_fds")
    assert m.value("process_cpu_seconds_total") >= 0
    assert abs(m.value("process_start_time_seconds") - time.time()) < 3600


# ---- refused registrations (SPEC §4.1) ------------------------------------------------

def _view(sb, ws):
    r = request(sb, "GET", "/workspaces/%s/delivery" % ws, token=sb.admin_token)
    assert r.status == 200, r
    return r.json()


def test_refused_registrations_are_logged_kept_and_told(sb):
    ws, other = unique_ws("alice"), unique_ws("platform")
    tok = harness.mint(sb, other)
    # 403: a valid token of another workspace.
    r = register(sb, ws, "http://10.0.0.7:8000/", token=tok["token"])
    assert r.status == 403
    v = _view(sb, ws)
    (ref,) = v["refused_registrations"]
    assert ref["status"] == 403 and ref["route"] == "register"
    assert ref["token_workspace"] == other and ref["token_id"] == tok["token_id"]
    assert tok["token"] not in json.dumps(v)
    assert "no endpoint is registered" in v["verdict"]
    assert "was refused: the token belongs to workspace `%s`" % other in v["verdict"], v["verdict"]
    # 401: an unknown token; the body's workspace_id names where it is kept.
    r = register(sb, ws, "http://10.0.0.7:8000/", token="sbt_" + "0" * 64)
    assert r.status == 401
    # 400 from a heartbeat of the workspace's own... admin token with a bad field.
    r = harness.heartbeat(sb, ws, active_tasks="many")
    assert r.status == 400
    v = _view(sb, ws)
    refs = v["refused_registrations"]
    assert [x["status"] for x in refs] == [400, 401, 403], refs
    assert refs[1]["token_workspace"] is None and refs[1]["code"] == "unauthorized"
    assert refs[0]["route"] == "heartbeat" and refs[0]["admin"] is True
    assert "heartbeat attempt" in v["verdict"], v["verdict"]
    # Logged, and never with the token.
    deadline = time.time() + 5
    while True:
        lines = [l for l in sb.log_lines() if l.get("event") == "registration_refused"
                 and l.get("workspace") == ws]
        if len(lines) >= 3 or time.time() > deadline:
            break
        time.sleep(0.05)
    assert len(lines) >= 3, lines
    assert {l["status"] for l in lines} == {400, 401, 403}
    assert tok["token"] not in sb.log_text()
    # Kept to the last few.
    for _ in range(7):
        register(sb, ws, "http://10.0.0.7:8000/", token=tok["token"])
    assert len(_view(sb, ws)["refused_registrations"]) == 5


def test_incident_replay_verdict_names_the_port_and_the_refusal(sb, agent):
    """The incident: the registered port answers 404 everywhere; the agent's real A2A
    server is on another port, named only by the card it registered; an earlier
    register with the wrong workspace's token was refused."""
    wrong = agent("status:404", "--no-card")
    right = agent("ok")
    ws, other = unique_ws("agent"), unique_ws("platform")
    tok = harness.mint(sb, other)
    card = {"name": "a", "url": right.url(), "version": "1", "protocolVersion": "0.3.0",
            "capabilities": {}, "skills": [], "defaultInputModes": [], "defaultOutputModes": []}
    assert register(sb, ws, wrong.url(), token=tok["token"], agent_card=card).status == 403
    r = register(sb, ws, wrong.url(), agent_card=card)
    assert r.status == 200, r
    probe = r.json()["probe"]
    assert probe["registered_card"]["matches"] is False
    assert probe["registered_card"]["advertised_urls"] == [right.url()]
    assert "card" not in probe
    for _ in range(2):
        harness.a2a(sb, ws, harness.send_v03())
    v = _view(sb, ws)["verdict"]
    assert "answered 404" in v, v
    assert "its agent card advertises %s" % right.url() in v, v
    assert "was refused: the token belongs to workspace `%s`" % other in v, v


def test_card_route_serves_the_probed_card_rewritten(sb, agent):
    ag = agent("ok")
    ws = unique_ws()
    r = register(sb, ws, ag.url())
    assert r.status == 200 and r.json()["probe"]["matches"] is True
    c = request(sb, "GET", "/workspaces/%s/.well-known/agent-card.json" % ws,
                token=sb.admin_token, headers={"Host": "sb.example:443",
                                               "X-Forwarded-Proto": "https"})
    assert c.status == 200, c
    assert c.json()["url"] == "https://sb.example:443/workspaces/%s/a2a" % ws
    assert c.json()["name"].startswith("fake-agent-")
    assert ag.url() not in c.body.decode()
    v = _view(sb, ws)
    assert "card" not in v["probe"] and v["probe"]["stale"] is False
    assert v["probe"]["advertised_urls"] == [ag.url()]
    # No card given and none fetched: 404.
    ws2 = unique_ws()
    assert register(sb, ws2, agent("ok", "--no-card").url()).status == 200
    c = request(sb, "GET", "/workspaces/%s/.well-known/agent-card.json" % ws2,
                token=sb.admin_token)
    assert c.status == 404


def test_probe_advertised_urls_deduplicated_and_staleness(sb, agent):
    ag = agent("status:404")
    ws = unique_ws()
    assert register(sb, ws, ag.url()).status == 200
    harness.a2a(sb, ws, harness.send_v03())
    p = _view(sb, ws)["probe"]
    assert p["stale"] is True and "pushes have failed after it" in p["note"], p


@pytest.mark.parametrize("method", ["agent/getAuthenticatedExtendedCard", "GetExtendedAgentCard"])
def test_extended_card_answer_is_rewritten(sb, agent, method):
    ag = agent("ok")
    ws = unique_ws()
    assert register(sb, ws, ag.url()).status == 200
    r = harness.a2a(sb, ws, {"jsonrpc": "2.0", "id": 7, "method": method, "params": {}},
                    headers={"Host": "sb.example"})
    assert r.status == 200 and r.header("X-Delivery-Mode") == "push", r
    card = r.json()["result"]
    want = "http://sb.example/workspaces/%s/a2a" % ws
    assert card["url"] == want and card["additionalInterfaces"][0]["url"] == want
    assert ag.url() not in r.body.decode()
    assert r.json()["id"] == 7


def test_head_on_the_lease_route_leases_nothing(sb):
    ws = unique_ws()
    assert register(sb, ws, delivery_mode="poll").status == 200
    harness.a2a(sb, ws, harness.send_v03())
    r = _raw(sb.port, "HEAD", "/workspaces/%s/inbox?max=5" % ws, sb.admin_token)
    assert r.status == 200, r.raw_head
    peek = request(sb, "GET", "/workspaces/%s/inbox/peek" % ws, token=sb.admin_token).json()
    assert peek["ready"] == 1 and peek["leased"] == 0, peek
