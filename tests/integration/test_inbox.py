"""The inbox of SPEC §4.4: lease (FIFO, max, lease_s, long-poll wait_s), peek, ack, nack,
redelivery of ended leases with delivery_count raised, dead letters (max_deliveries,
expired), a workspace seeing only its own inbox, many long-polls without a Redis
connection each, clients that leave mid-wait, and a graceful stop that does not wait for
long-polls. Messages are queued the simplest real way: sent to a workspace with no
endpoint (reason no_endpoint)."""

import json
import socket
import struct
import threading
import time

import pytest

from harness import (RawHTTP, a2a, inbox_ack, inbox_lease, inbox_nack, inbox_peek, mint,
                     request, send_v03, task_call, unique_ws)

LEASED_FIELDS = {"id", "message_id", "task_id", "kind", "source", "reason", "attempted",
                 "delivery_count", "enqueued_at", "expires_at", "request"}


def enqueue(sb, ws, n=1, token=None, **kw):
    """Queues |n| messages for |ws|; returns their (body, task id) in order."""
    out = []
    for _ in range(n):
        body = send_v03(**kw)
        r = a2a(sb, ws, body, token=token)
        assert r.status == 200 and r.header("X-Delivery-Mode") == "poll", r
        out.append((body, r.json()["result"]["id"]))
    return out


def mid(body):
    return body["params"]["message"]["messageId"]


@pytest.fixture(scope="module")
def short_lease_sb(module_make_sb):
    return module_make_sb(["--lease-s", "1", "--max-deliveries", "2"], name="sb-lease")


def test_lease_peek_ack_nack_lifecycle(sb):
    ws = unique_ws()
    msgs = enqueue(sb, ws, 3)
    r = inbox_lease(sb, ws, max=2, lease_s=30)
    assert r.status == 200, r
    j = r.json()
    got = j["messages"]
    assert [m["message_id"] for m in got] == [mid(b) for b, _ in msgs[:2]], "FIFO: %r" % j
    for m, (body, task_id) in zip(got, msgs):
        assert set(m) == LEASED_FIELDS, m
        assert m["id"].startswith("q_") and m["task_id"] == task_id, m
        assert m["kind"] == "chat" and m["source"] == "platform", m
        assert m["reason"] == "no_endpoint" and m["attempted"] is False, m
        assert m["delivery_count"] == 1, m
        assert m["request"] == body, m
        assert isinstance(m["enqueued_at"], str) and isinstance(m["expires_at"], str), m
    assert j["lease_s"] == 30 and isinstance(j["lease_expires_at"], str), j

    p = inbox_peek(sb, ws, max=10).json()
    assert [m["message_id"] for m in p["messages"]] == [mid(msgs[2][0])], p
    assert p["ready"] == 1 and p["leased"] == 2, p
    assert p["messages"][0]["delivery_count"] == 0, "a peek delivers nothing"

    first, second = got
    result = {"kind": "message", "role": "agent", "messageId": "ans-1",
              "parts": [{"kind": "text", "text": "done"}]}
    a = inbox_ack(sb, ws, first["id"], result=result)
    assert a.status == 200 and a.json()["status"] == "acked", a
    assert inbox_ack(sb, ws, first["id"]).status == 200, "ack is idempotent"
    n = inbox_nack(sb, ws, first["id"])
    assert n.status == 409 and n.json()["error"]["code"] == "message_state", n

    n = inbox_nack(sb, ws, second["id"])
    assert n.status == 200 and n.json()["status"] == "queued", n
    again = inbox_lease(sb, ws, max=10).json()["messages"]
    # the released one keeps its place ahead of the younger third message
    assert [m["message_id"] for m in again] == [mid(msgs[1][0]), mid(msgs[2][0])], again
    assert again[0]["delivery_count"] == 2, again

    missing = inbox_ack(sb, ws, "q_" + "0" * 24)
    assert missing.status == 404 and missing.json()["error"]["code"] == "message_not_found"
    assert inbox_ack(sb, ws, "not-an-id").status == 404


def test_inbox_is_private_to_its_workspace(sb):
    ws, other = unique_ws(), unique_ws()
    tok, other_tok = mint(sb, ws)["token"], mint(sb, other)["token"]
    (_, _), = enqueue(sb, ws, 1)
    qid = inbox_peek(sb, ws).json()["messages"][0]["id"]
    for r in (inbox_lease(sb, ws, token=other_tok), inbox_peek(sb, ws, token=other_tok),
              inbox_ack(sb, ws, qid, token=other_tok), inbox_nack(sb, ws, qid, token=other_tok)):
        assert r.status == 403 and r.json()["error"]["code"] == "forbidden", r
    assert request(sb, "GET", "/workspaces/%s/inbox" % ws).status == 401
    r = inbox_lease(sb, ws, token=tok)
    assert r.status == 200 and len(r.json()["messages"]) == 1, r
    assert inbox_ack(sb, ws, qid, token=tok).status == 200
    # the other workspace's own inbox knows nothing of it
    assert inbox_ack(sb, other, qid, token=other_tok).status == 404


@pytest.mark.parametrize("query", ["max=0", "max=101", "max=x", "wait_s=61", "wait_s=-1",
                                   "lease_s=0", "lease_s=3601", "lease_s=1.5"])
def test_lease_bounds(sb, query):
    r = request(sb, "GET", "/workspaces/%s/inbox?%s" % (unique_ws(), query),
                token=sb.admin_token)
    assert r.status == 400 and r.json()["error"]["code"] == "invalid_request", r


def test_ack_body_validation(sb):
    ws = unique_ws()
    enqueue(sb, ws, 1)
    qid = inbox_lease(sb, ws).json()["messages"][0]["id"]
    path = "/workspaces/%s/inbox/%s/ack" % (ws, qid)
    r = request(sb, "POST", path, body=b"{not json", token=sb.admin_token)
    assert r.status == 400 and r.json()["error"]["code"] == "invalid_json", r
    r = request(sb, "POST", path, body={"result": "a string"}, token=sb.admin_token)
    assert r.status == 400 and r.json()["error"]["code"] == "invalid_request", r
    assert inbox_peek(sb, ws).json()["leased"] == 1, "a refused ack changes nothing"
    assert request(sb, "POST", path, body={}, token=sb.admin_token).status == 200


def lease_in_thread(sb, ws, **kw):
    out = {}

    def run():
        t0 = time.time()
        out["resp"] = inbox_lease(sb, ws, timeout=70, **kw)
        out["took"] = time.time() - t0
    t = threading.Thread(target=run)
    t.start()
    return t, out


def test_long_poll_wakes_on_a_new_message(sb):
    ws = unique_ws()
    t, out = lease_in_thread(sb, ws, wait_s=10)
    time.sleep(0.5)
    (body, _), = enqueue(sb, ws, 1)
    t.join(15)
    r = out["resp"]
    assert r.status == 200 and [m["message_id"] for m in r.json()["messages"]] == [mid(body)]
    assert 0.4 <= out["took"] < 2.5, "woken by the enqueue, not by wait_s: %.2fs" % out["took"]


def test_long_poll_ends_empty_at_wait_s(sb):
    ws = unique_ws()
    t0 = time.time()
    r = inbox_lease(sb, ws, wait_s=1)
    took = time.time() - t0
    assert r.status == 200 and r.json()["messages"] == [], r
    assert r.json()["lease_expires_at"] is None, r
    assert 0.9 <= took < 3.0, took


def test_long_poll_wakes_when_a_lease_ends(sb):
    ws = unique_ws()
    (body, _), = enqueue(sb, ws, 1)
    assert len(inbox_lease(sb, ws, lease_s=1).json()["messages"]) == 1
    t0 = time.time()
    r = inbox_lease(sb, ws, wait_s=10)
    took = time.time() - t0
    msgs = r.json()["messages"]
    assert [m["message_id"] for m in msgs] == [mid(body)], r
    assert msgs[0]["delivery_count"] == 2, "redelivered with delivery_count raised"
    assert took < 2.5, "woken at the lease end, not at wait_s: %.2fs" % took


def redis_clients(redis):
    with redis.client() as c:
        info = c.call("INFO", "clients").decode()
    return int([ln for ln in info.splitlines() if ln.startswith("connected_clients:")][0]
               .split(":")[1])


def test_many_long_polls_share_connections(sb, redis):
    """300 waiting consumers of one workspace: no Redis connection each, one message goes
    to exactly one of them, the others end empty at wait_s."""
    ws = unique_ws()
    before = redis_clients(redis)
    conns = []
    try:
        req = ("GET /workspaces/%s/inbox?wait_s=3 HTTP/1.1\r\nHost: x\r\n"
               "Authorization: Bearer %s\r\n\r\n" % (ws, sb.admin_token)).encode()
        for _ in range(300):
            c = RawHTTP(sb.port, timeout=10)
            c.send(req)
            conns.append(c)
        time.sleep(0.8)
        during = redis_clients(redis)
        assert during - before <= 3, "waiters must not hold Redis connections: %d → %d" % (
            before, during)
        (body, _), = enqueue(sb, ws, 1)
        got = []
        for c in conns:
            r = c.read_response()
            assert r.status == 200, r.raw_head
            got.extend(json.loads(r.body)["messages"])
        assert [m["message_id"] for m in got] == [mid(body)], got
    finally:
        for c in conns:
            c.close()


def test_client_leaving_mid_wait_takes_nothing(sb):
    ws = unique_ws()
    for _ in range(5):
        c = RawHTTP(sb.port, timeout=5)
        c.send(("GET /workspaces/%s/inbox?wait_s=20 HTTP/1.1\r\nHost: x\r\n"
                "Authorization: Bearer %s\r\n\r\n" % (ws, sb.admin_token)).encode())
        time.sleep(0.05)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
    time.sleep(0.3)
    (body, _), = enqueue(sb, ws, 1)
    time.sleep(0.3)
    p = inbox_peek(sb, ws).json()
    assert p["ready"] == 1 and p["leased"] == 0, "a gone waiter must not hold a lease: %r" % p
    m = inbox_lease(sb, ws).json()["messages"]
    assert m[0]["message_id"] == mid(body) and m[0]["delivery_count"] == 1, m


def test_redelivery_then_max_deliveries_dead_letter(short_lease_sb):
    sb = short_lease_sb  # --lease-s 1 --max-deliveries 2
    ws = unique_ws()
    (body, task_id), = enqueue(sb, ws, 1)
    for count in (1, 2):
        m = inbox_lease(sb, ws).json()["messages"]
        assert len(m) == 1 and m[0]["delivery_count"] == count, m
        time.sleep(1.2)
    assert inbox_lease(sb, ws).json()["messages"] == [], "dead after 2 deliveries"
    r = task_call(sb, ws, "tasks/get", task_id)
    task = r.json()["result"]
    assert task["status"]["state"] == "failed", task
    assert task["metadata"]["switchboard"]["dead_reason"] == "max_deliveries", task
    p = inbox_peek(sb, ws).json()
    assert p["ready"] == 0 and p["leased"] == 0, p


def test_nack_past_max_deliveries_is_dead(short_lease_sb):
    sb = short_lease_sb
    ws = unique_ws()
    (_, task_id), = enqueue(sb, ws, 1)
    qid = inbox_lease(sb, ws).json()["messages"][0]["id"]
    assert inbox_nack(sb, ws, qid).json()["status"] == "queued"
    qid = inbox_lease(sb, ws).json()["messages"][0]["id"]
    n = inbox_nack(sb, ws, qid).json()
    assert n["status"] == "dead" and n["dead_reason"] == "max_deliveries", n


def test_expired_message_is_dead_letter(sb):
    ws = unique_ws()
    (_, task_id), = enqueue(sb, ws, 1, extra_params={"metadata": {"expires_in_s": 1}})
    time.sleep(1.2)
    assert inbox_lease(sb, ws).json()["messages"] == []
    task = task_call(sb, ws, "tasks/get", task_id).json()["result"]
    assert task["status"]["state"] == "failed", task
    assert task["metadata"]["switchboard"]["dead_reason"] == "expired", task


def test_graceful_stop_answers_long_polls(make_sb):
    inst = make_sb(name="sb-longpoll-stop")
    ws = unique_ws()
    t, out = lease_in_thread(inst, ws, wait_s=30)
    time.sleep(0.5)
    t0 = time.time()
    inst.stop(timeout=10)
    took = time.time() - t0
    t.join(10)
    assert took < 5.0, "a long-poll must not hold the stop: %.2fs" % took
    r = out["resp"]
    assert r.status == 200 and r.json()["messages"] == [], r


def test_queue_survives_script_flush_in_order(sb, redis):
    """Scripts go to Redis by SHA; a SCRIPT FLUSH (or a server that lost its script cache
    under a live connection) answers NOSCRIPT, and switchboard sends the script again in
    full: every message after the flush is still queued exactly once, deduplicated, with
    its counters noted once, in order — concurrent sends included."""
    ws = unique_ws()
    before = enqueue(sb, ws, 3)
    cli = redis.client()
    try:
        assert cli.call("SCRIPT", "FLUSH") in ("OK", b"OK"), "flush"
        after = enqueue(sb, ws, 3)
        assert cli.call("SCRIPT", "FLUSH") in ("OK", b"OK"), "flush"
    finally:
        cli.close()
    # a burst from several connections at once, right after a flush
    bodies = [send_v03() for _ in range(12)]
    results = [None] * len(bodies)

    def send(i):
        results[i] = a2a(sb, ws, bodies[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert all(r is not None and r.status == 200 for r in results), results
    # a repeated messageId after the flush is still the same task
    dup = a2a(sb, ws, after[0][0])
    assert dup.status == 200 and dup.json()["result"]["id"] == after[0][1], dup

    got = inbox_lease(sb, ws, max=50, lease_s=30).json()["messages"]
    ids = [m["message_id"] for m in got]
    assert ids[:6] == [mid(b) for b, _ in before + after], ids
    assert sorted(ids[6:]) == sorted(mid(b) for b in bodies), ids
    assert len(ids) == len(set(ids)) == 18, ids
    # the counters the append's script notes ran once per message (the duplicate too)
    v = request(sb, "GET", "/workspaces/%s/delivery" % ws, token=sb.admin_token).json()
    assert v["counters"]["fallbacks"] == 19, v["counters"]
    assert sb.wait_log(lambda o: o.get("event") == "redis_script_reload"), "logged"
