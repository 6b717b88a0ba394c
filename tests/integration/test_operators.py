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
    g = _raw(sb.port, "GET", p, sb.admin_token)
    h = _raw(sb.port, "HEAD", p, sb.admin_token)
    assert g.status == h.status == 200, (g.raw_head, h.raw_head)
    assert h.header("Content-Type") == g.header("Content-Type")
    if g.header("Content-Length") is not None and p != "/metrics":
        assert h.header("Content-Length") == g.header("Content-Length")
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
    assert [t["token_id"] for t in toks] == [m["token_id"] for m in minted]
    assert all(t["created_at"].endswith("Z") for t in toks)
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
