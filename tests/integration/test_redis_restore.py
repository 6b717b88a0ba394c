"""Replicas that cannot go stale (SPEC §4.5): a Redis restored from an older dump, or that
lost its data under a live connection (FLUSHALL), is detected; both instances reload their
registry and token replicas from it, and a write answered after that is in force on both
for the very next request."""

import os
import shutil
import time

import pytest

from harness import (RedisServer, Switchboard, a2a, assert_pushed, inbox_peek, mint, register,
                     request, send_v03, unique_ws)


@pytest.fixture
def pair(workdir):
    d = os.path.join(workdir, "restore-%d" % int(time.time() * 1000))
    redis = RedisServer(os.path.join(d, "redis")).start()
    a = Switchboard(os.path.join(d, "a"), redis.url, name="sb-a")
    b = Switchboard(os.path.join(d, "b"), redis.url, name="sb-b")
    try:
        a.start()
        b.start()
        yield redis, a, b
    finally:
        for s in (a, b):
            try:
                s.stop()
            finally:
                s.kill()
        redis.stop()


def loads(sb):
    return sum(1 for l in sb.log_lines() if l.get("event") == "sync_loaded")


def wait_reloaded(insts, before, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if all(loads(s) > n and request(s, "GET", "/readyz").status == 200
               for s, n in zip(insts, before)):
            return
        time.sleep(0.05)
    raise AssertionError("replicas not reloaded: %s" % [s.diagnostics(20) for s in insts])


def token_status(sb, ws, token):
    return inbox_peek(sb, ws, token=token).status


def test_restore_from_older_dump(pair, agent):
    redis, a, b = pair
    x, y, z = agent("ok"), agent("ok"), agent("ok")
    ws, ws2 = unique_ws(), unique_ws()
    assert register(a, ws, x.url()).status == 200
    tok_old = mint(a, ws2)
    with redis.client() as c:
        assert c.call("SAVE") == b"OK"
    dump = os.path.join(redis.workdir, "dump.rdb")
    older = os.path.join(redis.workdir, "older.rdb")
    shutil.copy(dump, older)

    # Written after the dump: the restore loses all of it.
    for _ in range(5):
        assert register(a, ws, y.url()).status == 200
    tok_lost = mint(a, ws2)
    r = request(a, "DELETE", "/admin/workspaces/%s/tokens/%s" % (ws2, tok_old["token_id"]),
                token=a.admin_token)
    assert r.status == 204, r
    for s in (a, b):
        assert token_status(s, ws2, tok_lost["token"]) == 200
        assert token_status(s, ws2, tok_old["token"]) == 401

    before = [loads(a), loads(b)]
    redis.stop()
    shutil.copy(older, dump)
    redis.start()
    wait_reloaded((a, b), before)

    # Both instances now hold what Redis holds: the restored history.
    for s in (a, b):
        assert token_status(s, ws2, tok_lost["token"]) == 401, s.name
        assert token_status(s, ws2, tok_old["token"]) == 200, s.name

    # A register answered after the restore is used by both for the next message.
    assert register(a, ws, z.url()).status == 200
    assert_pushed(a2a(a, ws, send_v03()))
    assert_pushed(a2a(b, ws, send_v03()))
    assert len(z.posts()) == 2, (len(x.posts()), len(y.posts()), len(z.posts()))

    # A revoke answered after the restore stops the token on both at once.
    r = request(b, "DELETE", "/admin/workspaces/%s/tokens/%s" % (ws2, tok_old["token_id"]),
                token=b.admin_token)
    assert r.status == 204, r
    for s in (a, b):
        assert token_status(s, ws2, tok_old["token"]) == 401, s.name
    assert any(l.get("event") == "redis_rewound" for l in a.log_lines() + b.log_lines())


def test_data_lost_under_a_live_connection(pair, agent):
    """FLUSHALL drops no connection: the epoch tells, within about a second."""
    redis, a, b = pair
    y, z = agent("ok"), agent("ok")
    ws, ws2 = unique_ws(), unique_ws()
    for _ in range(3):
        assert register(a, ws, y.url()).status == 200
    tok = mint(a, ws2)
    time.sleep(1.5)  # the epoch exists and both instances have read it
    with redis.client() as c:
        assert c.call("FLUSHALL") == b"OK"
    deadline = time.time() + 10
    while time.time() < deadline and any(token_status(s, ws2, tok["token"]) != 401
                                         for s in (a, b)):
        time.sleep(0.05)
    for s in (a, b):
        assert token_status(s, ws2, tok["token"]) == 401, s.name
        assert any(l.get("event") == "redis_epoch_changed" for l in s.log_lines()), s.name
    assert register(b, ws, z.url()).status == 200
    assert_pushed(a2a(a, ws, send_v03()))
    assert_pushed(a2a(b, ws, send_v03()))
    assert len(z.posts()) == 2
