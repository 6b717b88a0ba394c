"""Why does this agent get poll instead of push? The same answer from every surface
(SPEC §5): the caller's X-Delivery-Reason, the metrics, the delivery record
(GET /workspaces/{ws}/messages/{id}), the workspace view's verdict
(GET /workspaces/{ws}/delivery), `sbctl why WS` (and --json), and the decision log line.
Plus: record access control and states, GET /delivery ordering, the agent-card rewrite,
the registration probe persisted, and the queue gauges.

Counters and records of pushed messages are written by switchboard after it answered
(fire-and-forget), so reads of them poll briefly (eventually()).
"""

import json
import os
import subprocess
import time

import pytest

from harness import (a2a, clean_env, free_port, inbox_ack, inbox_lease, mint, register,
                     request, sb_bin_dir, send_v03, task_call, unique_ws)
from promtext import scrape


@pytest.fixture(scope="module")
def osb(module_make_sb):
    """Short timeouts (response_timeout within a second), one thread per test's surfaces."""
    return module_make_sb(["--push-timeout-s", "1", "--connect-timeout-ms", "1000"],
                          name="sb-obs")


def eventually(fn, timeout=3.0, interval=0.05):
    """fn() until it returns something truthy (returned) or the time is up (its last)."""
    deadline = time.time() + timeout
    while True:
        v = fn()
        if v or time.time() >= deadline:
            return v
        time.sleep(interval)


def fallbacks_metric(sb, reason):
    _, e = scrape(sb)
    for (name, labels), v in e.samples.items():
        if name == "switchboard_poll_fallbacks_total" and dict(labels).get("reason") == reason:
            return v
    raise AssertionError("no switchboard_poll_fallbacks_total{reason=%r}" % reason)


def record(sb, ws, mid, token=None):
    return request(sb, "GET", "/workspaces/%s/messages/%s" % (ws, mid),
                   token=sb.admin_token if token is None else token)


def view(sb, ws, token=None):
    r = request(sb, "GET", "/workspaces/%s/delivery" % ws,
                token=sb.admin_token if token is None else token)
    assert r.status == 200, r
    return r.json()


def sbctl(sb, *args):
    env = clean_env({"SWITCHBOARD_URL": "http://127.0.0.1:%d" % sb.port,
                     "SWITCHBOARD_ADMIN_TOKEN": sb.admin_token})
    p = subprocess.run([os.path.join(sb_bin_dir(), "sbctl")] + list(args), env=env,
                       capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def send(sb, ws, **kw):
    body = send_v03(**kw)
    return body["params"]["message"]["messageId"], a2a(sb, ws, body)


# ---- one reason, every surface --------------------------------------------------------

CASES = {
    # reason: (agent mode or None for a closed port, card port offset, verdict words)
    "connect_refused": (None, ["failed with connect_refused", "nothing listens at 127.0.0.1:"]),
    "http_404": ("status:404", ["answered 404 (the agent does not serve A2A at that path)",
                                "its agent card advertises http://127.0.0.1:"]),
    "http_5xx": ("status:503", ["answered 503 (the agent failed with a server error)"]),
    "response_timeout": ("hang", ["failed with response_timeout",
                                  "did not answer within --push-timeout-s"]),
}


@pytest.mark.parametrize("reason", sorted(CASES))
def test_one_reason_on_every_surface(osb, agent, reason):
    mode, words = CASES[reason]
    ws = unique_ws()
    if mode is None:
        url = "http://127.0.0.1:%d/" % free_port()
    else:
        extra = ("--card-url", "http://127.0.0.1:%d/" % free_port()) if reason == "http_404" else ()
        url = agent(mode, *extra).url()
    assert register(osb, ws, url).status == 200
    before = fallbacks_metric(osb, reason)

    mids = []
    for _ in range(2):
        mid, r = send(osb, ws)
        assert r.status == 200 and r.header("X-Delivery-Mode") == "poll", r
        assert r.header("X-Delivery-Reason") == reason, r            # 1. the caller
        mids.append(mid)

    assert fallbacks_metric(osb, reason) == before + 2                 # 2. the metrics

    rec = record(osb, ws, mids[-1])                                     # 3. the record
    assert rec.status == 200, rec
    rec = rec.json()
    assert rec["reason"] == reason and rec["state"] == "queued" and rec["mode"] == "poll", rec
    assert rec["message_id"] == mids[-1] and rec["workspace_id"] == ws, rec
    assert rec["task_id"].startswith("sbtask_") and rec["source"] == "platform", rec
    [att] = rec["attempts"]
    assert att["outcome"] == "failed" and att["reason"] == reason, att
    assert att["at"] and att["duration_ms"] >= 0 and att["detail"], att
    if reason.startswith("http_"):
        assert att["http_status"] == int(CASES[reason][0].split(":")[1]), att
    else:
        assert att["http_status"] is None, att

    v = eventually(lambda: (lambda j: j if j["counters"]["fallbacks"] >= 2 else None)(
        view(osb, ws)))                                                 # 4. the view
    assert v, view(osb, ws)
    assert v["counters"]["fallbacks_by_reason"] == {reason: 2}, v
    assert v["counters"]["last_reason"] == reason, v
    assert v["last_push"]["outcome"] == reason, v
    assert v["queue"]["depth"] == 2 and v["registered"] is True, v
    assert v["circuit"]["scope"] == "instance", v
    verdict = v["verdict"]
    assert verdict.startswith("Messages fall back to poll"), verdict
    assert url in verdict and "2 times since" in verdict, verdict
    for w in words:
        assert w in verdict, (w, verdict)
    assert "\n" not in verdict and verdict.endswith("."), verdict

    rc, out, err = sbctl(osb, "why", ws)                                # 5. sbctl
    assert rc == 0, (out, err)
    head = out.splitlines()
    assert head[0].split() == ["Workspace:", ws], out
    assert head[1].startswith("Verdict:") and head[1].split(None, 1)[1] == verdict, out
    assert reason in out, out
    rc, out, err = sbctl(osb, "--json", "why", ws)
    assert rc == 0 and json.loads(out)["counters"]["last_reason"] == reason, (out, err)

    lines = osb.wait_log(lambda o: o.get("event") == "delivery" and o.get("message_id") == mids[-1])
    assert lines and lines[0]["reason"] == reason and lines[0]["mode"] == "poll", lines  # 6. log
    for f in ("time", "workspace", "kind", "source", "detail", "duration_ms"):
        assert f in lines[0], (f, lines[0])


# ---- records --------------------------------------------------------------------------

def test_record_access_control(osb):
    target, sender, other = unique_ws(), unique_ws(), unique_ws()
    tt, ts, to = mint(osb, target)["token"], mint(osb, sender)["token"], mint(osb, other)["token"]
    body = send_v03()
    mid = body["params"]["message"]["messageId"]
    assert a2a(osb, target, body, token=ts).header("X-Delivery-Reason") == "no_endpoint"
    for token in (osb.admin_token, tt, ts):
        r = record(osb, target, mid, token=token)
        assert r.status == 200 and r.json()["source"] == sender, r
        assert r.json()["kind"] == "delegation", r
    r = record(osb, target, mid, token=to)
    assert r.status == 403 and r.json()["error"]["code"] == "forbidden", r
    r = record(osb, target, "no-such-message", token=osb.admin_token)
    assert r.status == 404 and r.json()["error"]["code"] == "message_not_found", r
    assert record(osb, target, mid, token="nope").status == 401


def test_same_message_id_from_two_senders(osb):
    target, a, b = unique_ws(), unique_ws(), unique_ws()
    ta, tb = mint(osb, a)["token"], mint(osb, b)["token"]
    mid = "shared-" + unique_ws()
    assert a2a(osb, target, send_v03(message_id=mid), token=ta).status == 200
    time.sleep(0.01)
    assert a2a(osb, target, send_v03(message_id=mid), token=tb).status == 200
    latest = record(osb, target, mid).json()
    assert latest["source"] == b and sorted(latest["sources"]) == sorted([a, b]), latest
    assert record(osb, target, mid, token=ta).json()["source"] == a  # a sender sees its own


def test_same_message_id_pushed_by_two_senders(osb, agent):
    # Pushed records live in a bucket per sender: both stay, each sender reads its own.
    ag = agent("ok")
    target, a, b = unique_ws(), unique_ws(), unique_ws()
    assert register(osb, target, ag.url()).status == 200
    ta, tb = mint(osb, a)["token"], mint(osb, b)["token"]
    mid = "shared-push-" + unique_ws()
    for token in (ta, tb):
        r = a2a(osb, target, send_v03(message_id=mid), token=token)
        assert r.status == 200 and r.header("X-Delivery-Mode") == "push", r
        time.sleep(0.01)

    def both():
        r = record(osb, target, mid)
        return r.json() if r.status == 200 and len(r.json().get("sources", [])) == 2 else None

    latest = eventually(both)
    assert latest, record(osb, target, mid)
    assert latest["source"] == b and sorted(latest["sources"]) == sorted([a, b]), latest
    assert latest["state"] == "delivered" and latest["mode"] == "push", latest
    mine = record(osb, target, mid, token=ta).json()
    assert mine["source"] == a and mine["state"] == "delivered", mine


def test_record_queued_leased_acked(osb):
    ws = unique_ws()
    assert register(osb, ws).status == 200  # poll mode
    mid, r = send(osb, ws)
    assert r.header("X-Delivery-Reason") == "poll_mode"
    rec = record(osb, ws, mid).json()
    assert rec["state"] == "queued" and rec["attempts"] == [] and rec["reason"] == "poll_mode", rec
    [m] = inbox_lease(osb, ws, lease_s=30).json()["messages"]
    rec = record(osb, ws, mid).json()
    assert rec["state"] == "leased" and rec["delivery_count"] == 1, rec
    assert [a["outcome"] for a in rec["attempts"]] == ["leased"], rec
    assert inbox_ack(osb, ws, m["id"]).status == 200
    assert record(osb, ws, mid).json()["state"] == "acked"
    v = view(osb, ws)
    assert v["delivery_mode"] == "poll" and "queued by design (poll_mode)" in v["verdict"], v
    assert "GET /workspaces/%s/inbox" % ws in v["verdict"], v


def test_record_pushed_delivered_and_healthy_verdict(osb, agent):
    ag = agent("ok")
    ws = unique_ws()
    assert register(osb, ws, ag.url()).status == 200
    mid, r = send(osb, ws)
    assert r.status == 200 and r.header("X-Delivery-Mode") == "push", r
    rec = eventually(lambda: (lambda x: x if x.status == 200 else None)(record(osb, ws, mid)))
    assert rec, record(osb, ws, mid)
    rec = rec.json()
    assert rec["state"] == "delivered" and rec["mode"] == "push" and rec["reason"] is None, rec
    [att] = rec["attempts"]
    assert att["outcome"] == "delivered" and att["http_status"] == 200, att
    v = eventually(lambda: (lambda j: j if j["counters"]["pushes"] == 1 else None)(view(osb, ws)))
    assert v and v["verdict"].startswith("Messages are pushed: the last push to %s" % ag.url()), v
    assert v["last_push"]["outcome"] == "delivered" and v["last_push"]["http_status"] == 200, v


def test_record_canceled_and_dead(osb):
    ws = unique_ws()
    mid, r = send(osb, ws)
    task_id = r.json()["result"]["id"]
    assert task_call(osb, ws, "tasks/cancel", task_id).status == 200
    assert record(osb, ws, mid).json()["state"] == "canceled"
    mid2, _ = send(osb, ws, extra_params={"metadata": {"expires_in_s": 1}})
    time.sleep(1.1)
    rec = record(osb, ws, mid2).json()
    assert rec["state"] == "dead" and rec["dead_reason"] == "expired", rec
    assert rec["attempts"][-1]["outcome"] == "dead", rec
    v = view(osb, ws)
    assert v["queue"]["dead_letters"] == 1 and "1 dead letter" in v["verdict"], v
    assert v["verdict"].startswith("Messages fall back to poll (no_endpoint)"), v


# ---- the overview ---------------------------------------------------------------------

def test_overview_worst_first(osb):
    old, new = unique_ws(), unique_ws()
    send(osb, old)
    time.sleep(1.1)
    send(osb, new)
    r = request(osb, "GET", "/delivery", token=osb.admin_token)
    assert r.status == 200, r
    ids = [w["workspace_id"] for w in r.json()["workspaces"]]
    assert old in ids and new in ids and ids.index(old) < ids.index(new), ids
    item = r.json()["workspaces"][ids.index(old)]
    assert item["queue_depth"] == 1 and item["oldest_age_s"] >= 1.0, item
    assert item["delivery_mode"] is None and item["circuit"] == "closed", item
    assert item["verdict"].startswith("Messages fall back to poll (no_endpoint)"), item
    tok = mint(osb, old)["token"]
    assert request(osb, "GET", "/delivery", token=tok).status == 403
    rc, out, err = sbctl(osb, "status")
    assert rc == 0 and old in out and new in out, (out, err)
    rc, out, _ = sbctl(osb, "--json", "status")
    assert rc == 0 and old in [w["workspace_id"] for w in json.loads(out)["workspaces"]]


# ---- agent cards and the probe ----------------------------------------------------------

V03_CARD = {"name": "a", "protocolVersion": "0.3.0", "url": "http://10.0.0.7:8000/",
            "additionalInterfaces": [{"url": "http://10.0.0.7:8000/", "transport": "JSONRPC"},
                                     {"url": "http://10.0.0.7:8001/grpc", "transport": "GRPC"}]}
V10_CARD = {"name": "b", "supportedInterfaces": [
    {"url": "http://10.0.0.7:8000/a2a", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}]}


@pytest.mark.parametrize("card", [V03_CARD, V10_CARD], ids=["v0.3", "v1.0"])
def test_agent_card_rewritten(osb, card):
    ws, caller = unique_ws(), unique_ws()
    path = "/workspaces/%s/.well-known/agent-card.json" % ws
    assert request(osb, "GET", path, token=osb.admin_token).status == 404
    assert register(osb, ws, agent_card=card).status == 200
    tok = mint(osb, caller)["token"]
    r = request(osb, "GET", path, token=tok)
    assert r.status == 200, r
    got = r.json()
    want = "http://127.0.0.1:%d/workspaces/%s/a2a" % (osb.port, ws)
    urls = [got.get("url")] + [i["url"] for i in got.get("additionalInterfaces", []) +
                               got.get("supportedInterfaces", [])]
    assert [u for u in urls if u is not None] and all(u == want for u in urls if u), got
    assert got["name"] == card["name"], got
    assert request(osb, "GET", path, token="nope").status == 401


def test_probe_persisted_and_shown(osb, agent):
    other = "http://127.0.0.1:%d/" % free_port()
    ag = agent("ok", "--card-url", other)
    ws = unique_ws()
    r = register(osb, ws, ag.url())
    assert r.status == 200 and r.json()["probe"]["matches"] is False, r
    reg = request(osb, "GET", "/registry/%s" % ws, token=osb.admin_token).json()
    assert reg["probe"] == r.json()["probe"], reg
    v = view(osb, ws)
    # The view adds how old the probe's facts are (issue 12).
    assert v["probe"]["stale"] is False and v["probe"]["age_s"] >= 0
    shown = {k: x for k, x in v["probe"].items() if k not in ("stale", "age_s")}
    assert shown == r.json()["probe"], v
    assert "none has been pushed yet" in v["verdict"] and other in v["verdict"], v
    # a re-register without a URL clears it
    assert register(osb, ws).status == 200
    assert request(osb, "GET", "/registry/%s" % ws, token=osb.admin_token).json()["probe"] is None


# ---- the queue gauges ---------------------------------------------------------------------

def test_queue_gauges_fed_from_redis(osb):
    send(osb, unique_ws())

    def gauges():
        _, e = scrape(osb)
        d = e.samples.get(("switchboard_queue_depth", ()), None)
        if d is None:
            d = next(v for (n, _), v in e.samples.items() if n == "switchboard_queue_depth")
        age = next(v for (n, _), v in e.samples.items()
                   if n == "switchboard_queue_oldest_age_seconds")
        return (d, age) if d >= 1 and age > 0 else None
    assert eventually(gauges, timeout=7.0, interval=0.25), "queue gauges stayed at 0"
