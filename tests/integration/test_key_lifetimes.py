"""Every key switchboard leaves in Redis is documented and cannot outlive its purpose
(proto/redis-schema.md, "Keys"): after a workload that touches every kind of key — pushed
records, fallbacks, inbox lease/ack/nack, task cancel, dead letters, a recovery drain, a
push-notification config, a refused registration — each key in Redis matches exactly one
row of the schema's key tables, and every key whose row is not one of the few that are
documented to live without a TTL (global indexes, the queue's sorted sets that Redis drops
when empty, per-workspace counters) has one. A write that creates a key before the command
that gives it its expiry — and forgets the second — fails here; so does a key the schema
does not list."""

import os
import re
import time

from harness import (FakeAgent, RedisServer, Switchboard, a2a, free_port,
                     inbox_ack, inbox_lease, inbox_nack, inbox_peek, register, request,
                     send_v03, task_call, unique_ws)

SCHEMA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto",
                      "redis-schema.md")

# Rows whose documented lifetime is not a TTL: global state and indexes, the queue's
# sorted sets and dedup hash (Redis drops a collection when its last member leaves), and
# the per-workspace counters ("forever (a handful of fields per workspace)").
NO_TTL = {
    "sb:{sb}:schema", "sb:{sb}:rev", "sb:{sb}:epoch", "sb:{sb}:endpoints", "sb:{sb}:ep",
    "sb:{sb}:tokens", "sb:{sb}:wstok", "sb:{sb}:instances", "sb:{sb}:queues",
    "sb:{sb}:pnws", "sb:{sb}:fallbacks", "sb:{sb}:redeliver",
    "sb:{ws}:q:ready", "sb:{ws}:q:leased", "sb:{ws}:q:expiry", "sb:{ws}:q:dedup",
    "sb:{ws}:q:seq", "sb:{ws}:q:stats",
}


def schema_rows():
    """The key templates of the schema's tables: first cell of every `| \\`sb:…\\` |` row."""
    rows = set()
    with open(SCHEMA, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"^\| `(sb:[^`]+)` \|", line)
            if m:
                rows.add(m.group(1))
    return rows


def template_regex(t):
    """`sb:{ws}:pb:<n>:<sender>` -> a regex over key names: {ws} is any hash tag but {sb},
    <…> one colon-free part."""
    out, i = "", 0
    for m in re.finditer(r"\{ws\}|<[^>]+>", t):
        out += re.escape(t[i:m.start()])
        out += r"\{(?!sb\})[^}]+\}" if m.group(0) == "{ws}" else r"[^:]+"
        i = m.end()
    return re.compile(out + re.escape(t[i:]) + r"\Z")


def all_keys(redis):
    keys = []
    with redis.client() as c:
        cursor = b"0"
        while True:
            cursor, batch = c.call("SCAN", cursor, "COUNT", 1000)
            for k in batch:
                keys.append((k.decode(), c.call("PTTL", k), c.call("TYPE", k).decode()))
            if cursor == b"0":
                return keys


def wait_for(pred, what, timeout=10.0):
    deadline = time.time() + timeout
    while True:
        v = pred()
        if v:
            return v
        assert time.time() < deadline, "timed out waiting for " + what
        time.sleep(0.05)


def test_every_key_is_documented_and_expires_unless_documented_not_to(workdir):
    d = os.path.join(workdir, "lifetimes")
    redis = RedisServer(os.path.join(d, "redis")).start()
    sb = Switchboard(os.path.join(d, "sb"), redis.url, name="sb-lifetimes")
    agents = []
    for sub in ("live", "back"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    try:
        sb.start()
        # pushed records (pb buckets, pbx, dstats) from the platform and from a peer
        live = FakeAgent(os.path.join(d, "live"), "ok").start()
        agents.append(live)
        ws_push, peer = unique_ws("push"), unique_ws("peer")
        assert register(sb, ws_push, live.url("/a2a")).status == 200
        assert register(sb, peer, delivery_mode="poll").status == 200
        peer_tok = request(sb, "POST", "/admin/workspaces/%s/tokens" % peer, body={},
                           token=sb.admin_token).json()["token"]
        for _ in range(3):
            assert a2a(sb, ws_push, send_v03()).header("X-Delivery-Mode") == "push"
        assert a2a(sb, ws_push, send_v03(), token=peer_tok).header("X-Delivery-Mode") == \
            "push"

        # fallbacks to a poll queue: messages, link buckets, dedup, queue index
        ws_poll = unique_ws("poll")
        assert register(sb, ws_poll, delivery_mode="poll").status == 200
        tasks = []
        for i in range(6):
            r = a2a(sb, ws_poll, send_v03(text="q%d" % i))
            assert r.status == 200 and r.header("X-Delivery-Mode") == "poll", r
            tasks.append(r.json()["result"]["id"])
        dup = send_v03(text="dup")
        for _ in range(2):  # the second is a duplicate of the first
            assert a2a(sb, ws_poll, dup).header("X-Delivery-Mode") == "poll"
        leased = inbox_lease(sb, ws_poll, max=2).json()["messages"]
        assert len(leased) == 2, leased
        assert inbox_ack(sb, ws_poll, leased[0]["id"], result={"ok": True}).status == 200
        assert inbox_nack(sb, ws_poll, leased[1]["id"]).status == 200
        assert task_call(sb, ws_poll, "tasks/cancel", tasks[-1]).status == 200

        # dead letters: messages that expire in a second
        for i in range(2):
            body = send_v03(text="dies %d" % i, extra_params={"metadata": {"expires_in_s": 1}})
            assert a2a(sb, ws_poll, body).header("X-Delivery-Mode") == "poll"

        # a push-notification config on a queued task
        recv_port = free_port()
        setp = {"taskId": tasks[2], "pushNotificationConfig": {
            "id": "c1", "url": "http://127.0.0.1:%d/hook" % recv_port, "token": "k"}}
        s = a2a(sb, ws_poll, {"jsonrpc": "2.0", "id": 1, "method":
                              "tasks/pushNotificationConfig/set", "params": setp})
        assert s.status == 200 and "result" in s.json(), s

        # a recovery drain: queued while the agent is down, drained once it is up
        ws_drain = unique_ws("drain")
        down = "http://127.0.0.1:%d/a2a" % free_port()
        assert register(sb, ws_drain, down).status == 200
        for i in range(4):
            r = a2a(sb, ws_drain, send_v03(text="d%d" % i))
            assert r.header("X-Delivery-Mode") == "poll", r
        back = FakeAgent(os.path.join(d, "back"), "ok").start()
        agents.append(back)
        assert register(sb, ws_drain, back.url("/a2a")).status == 200
        back.wait_posts(4, timeout=10.0)
        wait_for(lambda: inbox_peek(sb, ws_drain).json()["ready"] == 0, "the drain")

        # a refused registration (not an http(s) URL: 400)
        assert register(sb, unique_ws("refused"), "ftp://127.0.0.1/a2a").status == 400

        # let the two messages die, then settle them into dead letters
        def dead():
            inbox_peek(sb, ws_poll)
            r = request(sb, "GET", "/workspaces/%s/dead-letters" % ws_poll,
                        token=sb.admin_token)
            return len(r.json()["dead_letters"]) >= 2
        wait_for(dead, "two dead letters", timeout=8.0)
        time.sleep(0.3)  # the last notes' flush (2 ms) and index commands

        rows = schema_rows()
        regexes = [(t, template_regex(t)) for t in rows]
        assert NO_TTL <= rows, "NO_TTL names rows the schema no longer has: %s" % (
            NO_TTL - rows)
        keys = all_keys(redis)
        seen = set()
        problems = []
        for k, pttl, typ in keys:
            match = [t for t, rx in regexes if rx.match(k)]
            if len(match) != 1:
                problems.append("%s (%s): matches %s schema rows" % (k, typ, match or "no"))
                continue
            seen.add(match[0])
            if pttl == -1 and match[0] not in NO_TTL:
                problems.append("%s (%s, row %s) has no TTL" % (k, typ, match[0]))
        assert not problems, "\n".join(problems)
        # the workload reached the kinds of keys this test is about
        for t in ("sb:{ws}:msg:<id>", "sb:{ws}:pb:<n>:<sender>", "sb:{ws}:pbx",
                  "sb:{ws}:qb:<n>", "sb:{ws}:qbx", "sb:{ws}:dstats", "sb:{ws}:q:dead",
                  "sb:{ws}:pn:<entry id>", "sb:{ws}:pndue", "sb:{ws}:rd", "sb:{ws}:refused"):
            assert t in seen, "the workload left no %s key (keys: %s)" % (
                t, sorted(k for k, _, _ in keys))
    finally:
        sb.stop()
        sb.kill()
        for a in agents:
            a.stop()
        redis.stop()
