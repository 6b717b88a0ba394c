"""Graceful stop: in-flight pushes finish, new connections are refused, exit 0 (SPEC §1)."""

import signal
import socket
import threading
import time

import pytest

from harness import (LOOPBACK, a2a, assert_fallback, inbox_peek, register, request, send_v03,
                     unique_ws)


def _refused(port):
    try:
        socket.create_connection((LOOPBACK, port), timeout=0.3).close()
        return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return True


def _push_in_background(sb, ag, text):
    """Registers |ag| for a new workspace and sends it one message from a thread; returns
    once the agent has the push: (ws, body, thread, result dict with "r" or "e")."""
    ws = unique_ws()
    assert register(sb, ws, ag.url()).status == 200
    body = send_v03(text=text)
    result = {}

    def call():
        try:
            result["r"] = a2a(sb, ws, body, timeout=15)
        except Exception as e:  # reported by the caller
            result["e"] = e

    th = threading.Thread(target=call, daemon=True)
    th.start()
    assert ag.wait_posts(1, timeout=5.0), "the push never reached the agent"
    return ws, body, th, result


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_in_flight_push_survives_stop(make_sb, agent, sig):
    sb = make_sb(name="sb-stop")
    ag = agent("slow:1.5")
    ws, body, th, result = _push_in_background(sb, ag, "in flight")
    sent_at = time.time()
    sb.signal(sig)

    # new connections are refused while the push is still in flight
    refused = False
    while time.time() - sent_at < 1.0:
        if _refused(sb.port):
            refused = True
            break
        time.sleep(0.05)
    assert refused, "switchboard still accepted connections %.2fs after the signal" % (
        time.time() - sent_at)
    assert sb.alive(), "switchboard exited before its in-flight push finished"

    th.join(timeout=15)
    assert not th.is_alive(), "the in-flight call never finished"
    assert "e" not in result, "the in-flight call failed: %r" % result.get("e")
    r = result["r"]
    assert r.status == 200 and r.header("X-Delivery-Mode") == "push", r
    assert b"echo: in flight" in r.body

    try:
        code = sb.proc.wait(timeout=10)
    except Exception:
        code = None
    assert code == 0, "exit code after a graceful stop: %r" % code
    sb.stop()  # reaps and records; raises if the exit code was not 0


def test_idle_stop_is_quick(make_sb):
    sb = make_sb(name="sb-idle-stop")
    assert request(sb, "GET", "/healthz").status == 200
    t0 = time.time()
    sb.signal(signal.SIGTERM)
    code = sb.proc.wait(timeout=10)
    took = time.time() - t0
    assert code == 0
    assert took < 2.0, "an idle switchboard took %.2fs to stop" % took
    sb.stop()


def test_push_still_waiting_at_the_deadline_falls_back_to_the_queue(make_sb, agent):
    """Nothing accepted is dropped by a graceful stop (SPEC §1): a push whose agent has
    not answered when --shutdown-timeout-s runs out is queued (response_timeout,
    attempted), the caller gets the submitted Task, and the process still exits 0."""
    sb = make_sb(name="sb-deadline", extra_args=["--shutdown-timeout-s", "1"])
    peer = make_sb(name="sb-deadline-peer")
    ag = agent("hang")
    ws, body, th, result = _push_in_background(sb, ag, "caught by the stop")
    t0 = time.time()
    sb.signal(signal.SIGTERM)
    th.join(timeout=15)
    assert "e" not in result, "the in-flight call failed: %r" % result.get("e")
    assert_fallback(sb, result["r"], "response_timeout", body, ws, check_queued=False)
    assert sb.proc.wait(timeout=10) == 0
    assert time.time() - t0 < 6.0, "the stop took %.1fs" % (time.time() - t0)
    sb.stop()

    p = inbox_peek(peer, ws, max=10)
    assert p.status == 200, p
    mine = [m for m in p.json()["messages"]
            if m["message_id"] == body["params"]["message"]["messageId"]]
    assert len(mine) == 1, p.json()
    assert mine[0]["reason"] == "response_timeout" and mine[0]["attempted"] is True, mine
    assert mine[0]["request"] == body


def test_record_of_a_push_answered_just_before_the_stop_is_kept(make_sb, agent):
    """Delivered pushes' records wait a moment to share a Redis call (record.c): a stop
    right after the answer must still write them before the process exits."""
    sb = make_sb(name="sb-notes-stop")
    peer = make_sb(name="sb-notes-peer")
    ag = agent("ok")
    ws = unique_ws()
    assert register(sb, ws, ag.url()).status == 200
    body = send_v03(text="just before the stop")
    r = a2a(sb, ws, body)
    assert r.status == 200 and r.header("X-Delivery-Mode") == "push", r
    sb.signal(signal.SIGTERM)
    assert sb.proc.wait(timeout=10) == 0
    sb.stop()
    mid = body["params"]["message"]["messageId"]
    rec = request(peer, "GET", "/workspaces/%s/messages/%s" % (ws, mid), token=peer.admin_token)
    assert rec.status == 200, rec
    assert rec.json()["state"] == "delivered" and rec.json()["mode"] == "push", rec.json()
