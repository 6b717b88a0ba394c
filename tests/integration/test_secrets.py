"""Secrets and tokens never appear in switchboard's output (SPEC §2, §5.4)."""

import secrets

from harness import (a2a, heartbeat, mint, register, request, send_v03, send_v10, unique_ws)


def test_no_secret_in_the_log(make_sb, agent):
    sb = make_sb(name="sb-secrets")
    ok, failing = agent("ok"), agent("status:401")
    wanted_secret = []   # (label, value) that must not appear
    wanted_secret.append(("admin token", sb.admin_token))

    ws1, ws2, ws3 = unique_ws(), unique_ws(), unique_ws()
    t1, t2 = mint(sb, ws1), mint(sb, ws2)
    t_revoked = mint(sb, ws1)
    for label, t in (("ws1 token", t1), ("ws2 token", t2), ("revoked token", t_revoked)):
        wanted_secret.append((label, t["token"]))

    r1 = register(sb, ws1, ok.url(), token=t1["token"])
    r2 = register(sb, ws2, ok.url("/v1"), lease_s=30)
    r3 = register(sb, ws3, failing.url())
    for label, r in (("ws1", r1), ("ws2", r2), ("ws3", r3)):
        assert r.status == 200, r
        wanted_secret.append(("inbound_secret " + label, r.json()["inbound_secret"]))
    # a re-register answers the same secret; register once more to log that path too
    assert register(sb, ws1, ok.url(), token=t1["token"]).status == 200

    assert heartbeat(sb, ws2, token=t2["token"], active_tasks=1).status == 200
    assert request(sb, "GET", "/registry/%s" % ws1, token=t1["token"]).status == 200

    assert a2a(sb, ws1, send_v03(text="chat")).status == 200
    assert a2a(sb, ws1, send_v10(text="delegation"), token=t2["token"]).status == 200
    assert a2a(sb, ws2, send_v03(), token=t1["token"],
               headers={"X-Switchboard-User": "alice@example.com"}).status == 200
    for ws in (ws3, unique_ws()):  # http_401 from the agent; no_endpoint
        r = a2a(sb, ws, send_v03())
        assert r.status == 200 and r.header("X-Delivery-Mode") == "poll", r

    # the observability flows: records, views, the overview, the card, sbctl's routes
    ok_mid = "m-secret-" + secrets.token_hex(4)
    assert a2a(sb, ws1, send_v03(message_id=ok_mid)).status == 200
    for path, token in (("/workspaces/%s/messages/%s" % (ws1, ok_mid), t1["token"]),
                        ("/workspaces/%s/delivery" % ws3, sb.admin_token),
                        ("/workspaces/%s/delivery" % ws1, t1["token"]),
                        ("/delivery", sb.admin_token),
                        ("/workspaces/%s/.well-known/agent-card.json" % ws1, t2["token"])):
        r = request(sb, "GET", path, token=token)
        assert r.status in (200, 404), (path, r)
        for label, value in wanted_secret:
            assert value.encode() not in r.body, "%s appears in GET %s" % (label, path)

    # credentials that were presented but refused must not be logged either
    wrong = "wrong-" + secrets.token_hex(16)
    wanted_secret.append(("a refused token", wrong))
    assert request(sb, "GET", "/registry/%s" % ws1, token=wrong).status == 401
    assert request(sb, "GET", "/registry/%s" % ws1, token=sb.admin_token + "Z").status == 401
    assert request(sb, "POST", "/admin/workspaces/%s/tokens" % ws1, body={},
                   token=t1["token"]).status == 403
    assert request(sb, "DELETE", "/admin/workspaces/%s/tokens/%s" % (ws1, t_revoked["token_id"]),
                   token=sb.admin_token).status == 204
    assert request(sb, "GET", "/registry/%s" % ws1, token=t_revoked["token"]).status == 401

    sb.stop()  # include whatever is logged at shutdown
    text = sb.log_text()
    assert text.strip(), "switchboard logged nothing at all: cannot check anything"
    for label, value in wanted_secret:
        assert value not in text, "%s appears in switchboard's log" % label
