"""curl_client.py — HTTP/2 and TLS requests for the integration tests, through real curl.

Python's standard library speaks neither HTTP/2 nor ALPN-negotiated h2, and nothing comes
from pip here, so tests/integration/test_http2.py and test_tls.py drive switchboard with
curl (h2c prior knowledge, h2 over TLS, HTTP/1.1 over TLS) and, for raw frames, with a few
hand-built HTTP/2 frames over a plain socket. Every call has a timeout.
"""

import json
import os
import socket
import ssl
import struct
import subprocess
import tempfile
import time

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_DATA, FRAME_HEADERS, FRAME_RST, FRAME_SETTINGS, FRAME_PING, FRAME_GOAWAY = 0, 1, 3, 4, 6, 7


class CurlResp:
    def __init__(self, status, version, headers, body, stderr):
        self.status = status
        self.version = version  # "2" or "1.1"
        self.headers = headers  # lower-cased name -> last value
        self.body = body
        self.stderr = stderr

    def header(self, name):
        return self.headers.get(name.lower())

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self):
        return "<CurlResp %s HTTP/%s %r %r %r>" % (self.status, self.version, self.headers,
                                                  self.body[:300], self.stderr[-300:])


def curl(url, method="GET", body=None, headers=(), proto="h2c", cacert=None, timeout=15.0,
         extra=()):
    """One request with curl. |proto|: "h2c" (prior knowledge), "h2" (ALPN over TLS),
    "1.1" (HTTP/1.1). |body| bytes/str/JSON-able. Returns a CurlResp; raises
    AssertionError when curl itself fails (connection refused, protocol error, ...)."""
    with tempfile.TemporaryDirectory(prefix="sbcurl-") as d:
        out, hdr, data = (os.path.join(d, n) for n in ("body", "head", "data"))
        argv = ["curl", "-sS", "--max-time", "%g" % timeout, "-o", out, "-D", hdr,
                "-w", "%{http_code} %{http_version}"]
        argv += {"h2c": ["--http2-prior-knowledge"], "h2": ["--http2"],
                 "1.1": ["--http1.1"]}[proto]
        if cacert:
            argv += ["--cacert", cacert]
        if method != "GET":
            argv += ["-X", method]
        for k, v in headers:
            argv += ["-H", "%s: %s" % (k, v)]
        if body is not None:
            if not isinstance(body, (bytes, str)):
                body = json.dumps(body)
                argv += ["-H", "Content-Type: application/json"]
            if isinstance(body, str):
                body = body.encode()
            with open(data, "wb") as f:
                f.write(body)
            argv += ["--data-binary", "@" + data]
        argv += list(extra) + [url]
        p = subprocess.run(argv, capture_output=True, timeout=timeout + 10)
        if p.returncode != 0:
            raise AssertionError("curl %s failed (%d): %s" % (" ".join(argv), p.returncode,
                                                           p.stderr.decode(errors="replace")))
        code, version = p.stdout.decode().split()
        headers_out = {}
        with open(hdr, "rb") as f:
            for line in f.read().decode("latin-1").splitlines():
                k, sep, v = line.partition(":")
                if sep and not line.startswith("HTTP/"):
                    headers_out[k.strip().lower()] = v.strip()
        with open(out, "rb") as f:
            got = f.read()
        return CurlResp(int(code), version, headers_out, got, p.stderr.decode(errors="replace"))


# ---- raw HTTP/2 frames, for what curl cannot do (hold a connection open, watch GOAWAY) ----

def frame(ftype, flags, stream_id, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", stream_id & 0x7FFFFFFF) + payload


class RawH2:
    """A socket that sent the client preface and an empty SETTINGS frame: cleartext (h2c
    prior knowledge), or TLS with ALPN "h2" when |cafile| is given."""

    def __init__(self, port, host="127.0.0.1", timeout=5.0, cafile=None):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.alpn = None
        if cafile is not None:
            ctx = ssl.create_default_context(cafile=cafile)
            ctx.set_alpn_protocols(["h2"])
            self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost")
            self.alpn = self.sock.selected_alpn_protocol()
        self.sock.settimeout(timeout)
        self.buf = b""
        self.sock.sendall(H2_PREFACE + frame(FRAME_SETTINGS, 0, 0))

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def frames_until_closed(self, timeout):
        """Reads frames until EOF or |timeout|; answers PINGs (so a graceful GOAWAY
        sequence can complete). Returns ([(type, flags, stream, payload)], eof)."""
        out = []
        deadline = time.time() + timeout
        eof = False
        while time.time() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.time()))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                break
            except OSError:
                eof = True
                break
            if not chunk:
                eof = True
                break
            self.buf += chunk
            while len(self.buf) >= 9:
                n = struct.unpack(">I", b"\0" + self.buf[:3])[0]
                if len(self.buf) < 9 + n:
                    break
                ftype, flags = self.buf[3], self.buf[4]
                sid = struct.unpack(">I", self.buf[5:9])[0] & 0x7FFFFFFF
                payload = self.buf[9:9 + n]
                self.buf = self.buf[9 + n:]
                out.append((ftype, flags, sid, payload))
                try:
                    if ftype == FRAME_PING and not flags & 1:
                        self.sock.sendall(frame(FRAME_PING, 1, 0, payload))
                    elif ftype == FRAME_SETTINGS and not flags & 1:
                        self.sock.sendall(frame(FRAME_SETTINGS, 1, 0))
                except OSError:
                    pass
        return out, eof


def goaways(frames):
    """[(last_stream_id, error_code)] of every GOAWAY in |frames|."""
    return [struct.unpack(">II", p[:8]) for t, _, _, p in frames if t == FRAME_GOAWAY]
