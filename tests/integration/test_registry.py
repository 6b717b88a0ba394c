"""The registry: register, modes, URL policy, redaction, delete, leases, and two instances
sharing one Redis (SPEC §3, §4.1)."""

import time

import pytest

from harness import (FakeAgent, a2a, assert_error_body, assert_fallback, assert_pushed,
                     heartbeat, mint, register, request, send_v03, unique_ws)


@pytest.fixture(scope="module")
def strict_sb(module_make_sb):
    """An instance WITHOUT --allow-upstream: loopback upstreams are forbidden."""
    return module_make_sb(allow_loopback=False, name="sb-strict")


@pytest.fixture(scope="module")
def sb_b(module_make_sb):
    """A second instance on the module's Redis."""
    return module_make_sb(name="sb-b")


def test_register_push_answer(sb, agent):
    ag = agent("ok")
    ws = unique_ws()
    r = register(sb, ws, ag.url())
    assert r.status == 200, r
    j = r.json()
    for k in ("status", "delivery_mode", "inbound_secret", "lease_expires_at", "probe"):
        assert k in j, "register answer lacks %s: %r" % (k, j)
    assert j["status"] == "registered"
    assert j["delivery_mode"] == "push"
    assert isinstance(j["inbound_secret"], str) and len(j["inbound_secret"]) >= 16, j
    probe = j["probe"]
    assert isinstance(probe, dict), j
    for k in ("reachable", "status", "card_url", "matches"):
        assert k in probe, "probe lacks %s: %r" % (k, probe)
    assert probe["reachable"] is True and probe["status"] == 200, probe
    assert probe["matches"] is True, "card advertises the registered url: %r" % probe
    assert ag.requests("GET"), "the probe should have fetched the agent card"
    assert ag.requests("GET")[0]["path"] == "/.well-known/agent-card.json"


def test_probe_warns_but_never_refuses_on_card_mismatch(sb, agent):
    ag = agent("ok", "--card-url", "http://127.0.0.1:1/somewhere-else")
    ws = unique_ws()
    r = register(sb, ws, ag.url())
    assert r.status == 200, r
    assert r.json()["probe"]["matches"] is False, r.json()


def test_register_with_own_workspace_token(sb, agent):
    ag = agent("ok")
    ws = unique_ws()
    tok = mint(sb, ws)["token"]
    r = register(sb, ws, ag.url(), token=tok)
    assert r.status == 200, r
    assert r.json()["delivery_mode"] == "push"


def test_register_without_url_defaults_to_poll(sb):
    ws = unique_ws()
    r = register(sb, ws)
    assert r.status == 200, r
    assert r.json()["delivery_mode"] == "poll"


def test_reregister_keeps_inbound_secret(sb, agent):
    a1, a2 = agent("ok"), agent("ok")
    ws = unique_ws()
    s1 = register(sb, ws, a1.url()).json()["inbound_secret"]
    s2 = register(sb, ws, a2.url("/a2a")).json()["inbound_secret"]
    assert s1 == s2
    r = a2a(sb, ws, send_v03())
    assert r.status == 200, r
    (rec,) = a2.wait_posts(1)
    assert rec["path"] == "/a2a"
    assert a2.header(rec, "Authorization") == "Bearer %s" % s1
    assert a1.posts() == []


def test_mode_is_never_sticky(sb, agent):
    ag = agent("ok")
    ws = unique_ws()
    r = register(sb, ws, ag.url(), delivery_mode="poll")
    assert r.status == 200 and r.json()["delivery_mode"] == "poll", r
    body = send_v03()
    assert_fallback(sb, a2a(sb, ws, body), "poll_mode", body, ws)
    assert ag.posts() == []

    r = register(sb, ws, ag.url())  # no mode: push again, because a url is given
    assert r.status == 200 and r.json()["delivery_mode"] == "push", r
    body2 = send_v03()
    r = a2a(sb, ws, body2)
    assert_pushed(r)
    # the message queued under poll mode is drained now that the workspace pushes
    posts = ag.wait_posts(2)
    assert sorted(FakeAgent.header(p, "X-Switchboard-Message-Id") for p in posts) == sorted(
        [body["params"]["message"]["messageId"], body2["params"]["message"]["messageId"]])


@pytest.mark.parametrize("url", [
    "ftp://127.0.0.1/", "http://", "http:///a2a", "garbage", "", "127.0.0.1:8080",
    "javascript:alert(1)", "http://:8080/", "https://", 12, None,
])
def test_bad_url_is_400(sb, url):
    ws = unique_ws()
    body = {"workspace_id": ws, "url": url, "delivery_mode": "push"}
    r = request(sb, "POST", "/registry/register", body=body, token=sb.admin_token)
    assert r.status == 400, "url %r: %r" % (url, r)
    assert_error_body(r)


@pytest.mark.parametrize("body", [
    b"not json", b"[]", b'{"url":"http://127.0.0.1:9/"}', b'{"workspace_id":5}',
    b'{"workspace_id":"x","url":"http://127.0.0.1:9/","delivery_mode":"carrier-pigeon"}',
])
def test_bad_register_body_is_400(sb, body):
    r = request(sb, "POST", "/registry/register", body=body, token=sb.admin_token)
    assert r.status == 400, "body %r: %r" % (body, r)
    assert_error_body(r)


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata (link-local)
    "http://224.0.0.1/",                         # multicast
    "http://0.0.0.0:8080/",                      # unspecified
    "http://[::1]:8080/",                        # IPv6 loopback: only 127/8 is opened
    "http://[fe80::1]:8080/",                    # IPv6 link-local
    "http://[::ffff:169.254.169.254]/",          # IPv4-mapped metadata address
])
def test_forbidden_literal_address_is_400_upstream_forbidden(sb, url):
    r = register(sb, unique_ws(), url)
    assert r.status == 400, "url %s: %r" % (url, r)
    assert_error_body(r, code="upstream_forbidden")


def test_loopback_forbidden_without_allow_upstream(strict_sb, agent):
    ag = agent("ok")
    for url in ("http://127.0.0.1:1/", ag.url(), "http://127.0.0.2:%d/" % ag.port):
        r = register(strict_sb, unique_ws(), url)
        assert r.status == 400, "url %s on an instance without --allow-upstream: %r" % (url, r)
        assert_error_body(r, code="upstream_forbidden")
    assert ag.requests() == [], "a forbidden upstream was contacted (probe?)"


def test_get_record_redacts_the_secret(sb, agent):
    ag = agent("ok")
    ws = unique_ws()
    tok = mint(sb, ws)["token"]
    secret = register(sb, ws, ag.url()).json()["inbound_secret"]
    for t in (sb.admin_token, tok):
        r = request(sb, "GET", "/registry/%s" % ws, token=t)
        assert r.status == 200, r
        j = r.json()
        assert isinstance(j, dict), j
        assert secret.encode() not in r.body, "inbound_secret leaked by GET /registry: %r" % r
        assert ag.url().encode() in r.body, "the record should show the url: %r" % j
        assert all(str(v) != secret for v in r.headers.values())


def test_delete_then_no_endpoint(sb, agent):
    ag = agent("ok")
    ws = unique_ws()
    assert register(sb, ws, ag.url()).status == 200
    assert_pushed(a2a(sb, ws, send_v03()))
    r = request(sb, "DELETE", "/registry/%s" % ws, token=sb.admin_token)
    assert r.status == 204, r
    body = send_v03()
    assert_fallback(sb, a2a(sb, ws, body), "no_endpoint", body, ws)
    assert len(ag.posts()) == 1


def test_delete_with_own_token(sb, agent):
    ag = agent("ok")
    ws = unique_ws()
    tok = mint(sb, ws)["token"]
    assert register(sb, ws, ag.url(), token=tok).status == 200
    assert request(sb, "DELETE", "/registry/%s" % ws, token=tok).status == 204
    body = send_v03()
    assert_fallback(sb, a2a(sb, ws, body), "no_endpoint", body, ws)


def test_lease_expires_without_heartbeat(sb, agent):
    ag = agent("ok")
    ws = unique_ws()
    r = register(sb, ws, ag.url(), lease_s=1)
    assert r.status == 200, r
    assert r.json()["lease_expires_at"], "a lease was asked for: %r" % r.json()
    assert_pushed(a2a(sb, ws, send_v03()))
    time.sleep(1.6)
    body = send_v03()
    assert_fallback(sb, a2a(sb, ws, body), "lease_expired", body, ws)
    assert len(ag.posts()) == 1


def test_heartbeat_renews_the_lease(sb, agent):
    ag = agent("ok")
    ws = unique_ws()
    assert register(sb, ws, ag.url(), lease_s=1).status == 200
    end = time.time() + 2.2
    while time.time() < end:
        h = heartbeat(sb, ws, active_tasks=0)
        assert h.status == 200, h
        time.sleep(0.3)
    assert_pushed(a2a(sb, ws, send_v03()))


def test_heartbeat_for_unregistered_workspace_is_not_200(sb):
    r = heartbeat(sb, unique_ws())
    assert r.status in (404, 409, 400), r
    assert_error_body(r)


def test_register_on_one_instance_is_used_by_another(sb, sb_b, agent):
    """SPEC §4.1: "a register on one instance is used by every instance for the next
    message". Repeated, because a propagation race only shows now and then."""
    a1, a2 = agent("ok"), agent("ok")
    late = []
    for i in range(20):
        ws = unique_ws()
        assert register(sb, ws, a1.url()).status == 200
        r = a2a(sb_b, ws, send_v03())  # immediately, on the other instance
        if r.status != 200:
            late.append((i, r.status, r.header("X-Delivery-Reason")))
    assert not late, ("a register on instance A was not used by instance B for the next "
                      "message in %d of 20 tries: %s" % (len(late), late))

    ws = unique_ws()
    assert register(sb, ws, a1.url()).status == 200
    assert_pushed(a2a(sb_b, ws, send_v03()))
    n1 = len(a1.posts())
    assert register(sb, ws, a2.url()).status == 200  # replaced: B must use the new url
    assert_pushed(a2a(sb_b, ws, send_v03()))
    assert len(a2.posts()) == 1 and len(a1.posts()) == n1

    assert request(sb, "DELETE", "/registry/%s" % ws, token=sb.admin_token).status == 204
    body = send_v03()
    assert_fallback(sb_b, a2a(sb_b, ws, body), "no_endpoint", body, ws)
