"""--tls-listen with --tls-cert/--tls-key: TLS 1.2+, ALPN h2 and http/1.1 (SPEC §1).

A throwaway CA and a server certificate for 127.0.0.1/localhost are made with the openssl
CLI in the module's temp dir; curl trusts that CA only (--cacert), so every test also
checks the chain switchboard serves.
"""

import os
import signal
import socket
import subprocess
import time

import pytest

import harness
from curl_client import RawH2, curl, goaways
from harness import LOOPBACK, FakeAgent, register, send_v03, unique_ws


def _openssl(*args, cwd):
    p = subprocess.run(["openssl"] + list(args), cwd=cwd, capture_output=True, timeout=60)
    assert p.returncode == 0, "openssl %s: %s" % (" ".join(args), p.stderr.decode())


@pytest.fixture(scope="module")
def pki(workdir):
    d = os.path.join(workdir, "pki")
    os.makedirs(d, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=switchboard test CA",
             cwd=d)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=d)
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    with open(os.path.join(d, "not-pem.crt"), "w") as f:
        f.write("this is not a certificate\n")
    return {k: os.path.join(d, v) for k, v in (("ca", "ca.crt"), ("cert", "server.crt"),
                                               ("key", "server.key"), ("ca_key", "ca.key"),
                                               ("bad", "not-pem.crt"))}


def _tls_sb(factory, pki, name):
    port = harness.free_port()
    sb = factory(extra_args=["--tls-listen", "%s:%d" % (LOOPBACK, port), "--tls-cert", pki["cert"],
                             "--tls-key", pki["key"]], name=name)
    sb.tls_port = port
    return sb


@pytest.fixture(scope="module")
def tsb(module_make_sb, pki):
    return _tls_sb(module_make_sb, pki, "sb-tls")


def turl(sb, path, host=LOOPBACK):
    return "https://%s:%d%s" % (host, sb.tls_port, path)


def test_alpn_h2_and_http11(tsb, pki):
    r = curl(turl(tsb, "/healthz"), proto="h2", cacert=pki["ca"])
    assert r.status == 200 and r.version == "2", r
    r = curl(turl(tsb, "/healthz"), proto="1.1", cacert=pki["ca"])
    assert r.status == 200 and r.version == "1.1", r
    r = curl(turl(tsb, "/healthz", host="localhost"), proto="h2", cacert=pki["ca"])
    assert r.status == 200 and r.version == "2", r


def test_tls12_still_works_with_h2(tsb, pki):
    r = curl(turl(tsb, "/healthz"), proto="h2", cacert=pki["ca"],
             extra=["--tlsv1.2", "--tls-max", "1.2", "-v"])
    assert r.status == 200 and r.version == "2", r
    assert "TLSv1.2" in r.stderr, r.stderr


def test_no_alpn_is_http11(tsb, pki):
    p = subprocess.run(["openssl", "s_client", "-quiet", "-connect", "%s:%d" % (LOOPBACK,
                        tsb.tls_port), "-CAfile", pki["ca"], "-verify_return_error"],
                       input=b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                       capture_output=True, timeout=15)
    assert p.stdout.startswith(b"HTTP/1.1 200 "), (p.stdout, p.stderr)


def test_a2a_push_over_tls_h2(tsb, pki, agent):
    ag = agent("ok")
    ws = unique_ws()
    assert register(tsb, ws, ag.url("/a2a")).status == 200
    body = send_v03(text="over tls")
    r = curl(turl(tsb, "/workspaces/%s/a2a" % ws), method="POST", body=body, proto="h2",
             cacert=pki["ca"], headers=[("Authorization", "Bearer %s" % tsb.admin_token)])
    assert r.status == 200 and r.version == "2", r
    assert r.header("x-delivery-mode") == "push", r
    (rec,) = ag.wait_posts(1)
    assert r.body == FakeAgent.response_bytes(rec)
    r = curl(turl(tsb, "/workspaces/%s/a2a" % ws), method="POST", body=send_v03(text="h1 tls"),
             proto="1.1", cacert=pki["ca"],
             headers=[("Authorization", "Bearer %s" % tsb.admin_token)])
    assert r.status == 200 and r.version == "1.1" and b"echo: h1 tls" in r.body, r


def test_h2load_over_tls(tsb):
    p = subprocess.run(["h2load", "-n", "2000", "-c", "4", "-m", "32", turl(tsb, "/healthz")],
                       capture_output=True, timeout=60)
    out = p.stdout.decode()
    assert p.returncode == 0, out + p.stderr.decode()
    assert "Application protocol: h2" in out, out
    assert "2000 succeeded, 0 failed, 0 errored, 0 timeout" in out, out


def test_listening_line_names_both_listeners(tsb):
    lines = tsb.wait_log(lambda o: o.get("event") == "listening")
    assert lines, tsb.diagnostics()
    msg = lines[0]["msg"]
    assert "%s:%d" % (LOOPBACK, tsb.port) in msg and "%s:%d" % (LOOPBACK, tsb.tls_port) in msg, msg
    assert "h2c" in msg and "h2" in msg and "TLS" in msg, msg


def test_plaintext_on_tls_port_is_refused(tsb):
    with socket.create_connection((LOOPBACK, tsb.tls_port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        data = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
    assert b"200" not in data and not data.startswith(b"HTTP/1.1 200"), data


def test_bad_certificate_refuses_to_start(pki, workdir, redis):
    for cert, key, want in ((pki["bad"], pki["key"], "--tls-cert"),
                            (pki["cert"], pki["bad"], "--tls-key"),
                            (pki["cert"], pki["ca_key"], "--tls-key")):
        port, tport = harness.free_port(), harness.free_port()
        argv = [harness.sb_binary(), "--listen", "%s:%d" % (LOOPBACK, port), "--tls-listen",
                "%s:%d" % (LOOPBACK, tport), "--tls-cert", cert, "--tls-key", key,
                "--redis", redis.url, "--admin-token", harness.new_token()]
        p = harness.spawn(argv, "switchboard bad tls", stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=harness.clean_env())
        try:
            out, err = p.communicate(timeout=15)
        finally:
            harness.kill_group(p)
        err = err.decode()
        assert p.returncode != 0, (cert, key, err)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1, "one clear line on stderr: %r" % err
        assert want in lines[0] and os.path.basename(key if want == "--tls-key" else cert) \
            in lines[0], lines[0]
        assert b"listening" not in out


def test_sigterm_with_open_tls_connections_exits_0(make_sb, pki):
    sb = _tls_sb(make_sb, pki, "sb-tls-stop")
    # An idle HTTP/2-over-TLS connection, an idle h2c one, and a TCP connection that never
    # starts its handshake: the first two get GOAWAY, none of them holds the stop up.
    raw = socket.create_connection((LOOPBACK, sb.tls_port), timeout=5)
    tls_idle = RawH2(sb.tls_port, cafile=pki["ca"])
    assert tls_idle.alpn == "h2"
    h2c_idle = RawH2(sb.port)
    first, _ = tls_idle.frames_until_closed(0.3)
    assert first and first[0][0] == 4, "SETTINGS first over TLS: %r" % first
    h2c_idle.frames_until_closed(0.2)
    assert curl(turl(sb, "/healthz"), proto="h2", cacert=pki["ca"]).status == 200
    t0 = time.time()
    sb.signal(signal.SIGTERM)
    for conn in (tls_idle, h2c_idle):
        frames, eof = conn.frames_until_closed(5.0)
        conn.close()
        ga = goaways(frames)
        assert eof and ga and ga[-1][1] == 0, frames
    code = sb.proc.wait(timeout=10)
    took = time.time() - t0
    raw.close()
    assert code == 0, "exit code after a graceful stop: %r" % code
    assert took < 5.0, "stop took %.1fs with idle connections open" % took
    sb.stop()


def test_sbctl_over_https_with_cacert(tsb, pki):
    """sbctl speaks https through libcurl: verified against --cacert, refused without it."""
    sbctl = os.path.join(harness.sb_bin_dir(), "sbctl")
    env = harness.clean_env({"SWITCHBOARD_ADMIN_TOKEN": tsb.admin_token})
    url = turl(tsb, "")
    ok = subprocess.run([sbctl, "--url", url, "--cacert", pki["ca"], "health"], env=env,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "yes" in ok.stdout, (ok.stdout, ok.stderr)
    st = subprocess.run([sbctl, "--url", url, "--cacert", pki["ca"], "--json", "status"], env=env,
                        capture_output=True, text=True, timeout=60)
    assert st.returncode == 0 and "workspaces" in st.stdout, (st.stdout, st.stderr)
    bad = subprocess.run([sbctl, "--url", url, "health"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 3 and "TLS" in bad.stderr and "--cacert" in bad.stderr, bad.stderr
