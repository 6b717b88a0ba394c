"""harness.py — real processes and real sockets for switchboard's integration tests.

Everything here starts or talks to a real process: redis-server, tests/peers/fake_agent.py
and $SB_BIN/switchboard. Every process is started in its own process group and recorded
in PROCS, so that fixtures (and, as a last resort, the session-end check in conftest.py)
can kill it and prove that nothing outlives the run. Every socket has a timeout and every
wait has a deadline: pytest here has no timeout plugin, so a hang must end by itself.

Only loopback addresses are used.
"""

import base64
import http.client
import json
import os
import re
import secrets
import select
import signal
import socket
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
FAKE_AGENT = os.path.join(REPO, "tests", "peers", "fake_agent.py")
PYTHON = sys.executable or "/usr/bin/python3"
LOOPBACK = "127.0.0.1"

# Every process any test started: [(Popen, description)].
PROCS = []
# Every switchboard instance started, for failure diagnostics.
SWITCHBOARDS = []


# --------------------------------------------------------------------------------------
# processes

def sb_bin_dir():
    d = os.environ.get("SB_BIN")
    if not d:
        d = os.path.join(REPO, "bin")
    return os.path.abspath(d)


def sb_binary():
    return os.path.join(sb_bin_dir(), "switchboard")


def clean_env(extra=None):
    """The environment for a child: ours without any SWITCHBOARD_* variable, plus |extra|."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    if extra:
        env.update(extra)
    return env


def spawn(argv, desc, **kw):
    """Starts |argv| in a new session (its own process group) and records it."""
    kw.setdefault("stdin", subprocess.DEVNULL)
    p = subprocess.Popen(argv, start_new_session=True, **kw)
    PROCS.append((p, desc))
    return p


def kill_group(p, sig=signal.SIGKILL, wait_s=5.0):
    """Signals |p|'s whole process group and reaps |p|. Never raises for a dead group."""
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            pass


def group_alive(p):
    """True while |p| or any process of its group exists (|p| is reaped first)."""
    p.poll()
    if p.returncode is None:
        return True
    try:
        os.killpg(p.pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def leftovers():
    return [(p, d) for p, d in PROCS if group_alive(p)]


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def tail(path, n=60):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return "<cannot read %s: %s>" % (path, e)
    lines = data.decode("utf-8", "replace").splitlines()
    return "\n".join(lines[-n:])


def unique_ws(prefix="ws"):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:10])


def new_token():
    return "adm-" + secrets.token_hex(16)


# --------------------------------------------------------------------------------------
# Redis: the server and a minimal RESP client

class RespError(Exception):
    pass


class RespClient:
    """A tiny RESP2 client over a real socket (no redis-py here)."""

    def __init__(self, port, host=LOOPBACK, timeout=5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.f = self.sock.makefile("rb")

    def close(self):
        try:
            self.f.close()
        finally:
            self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def call(self, *args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            if isinstance(a, str):
                a = a.encode()
            elif isinstance(a, int):
                a = str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.sock.sendall(out)
        return self._read()

    def _read(self):
        line = self.f.readline()
        if not line:
            raise ConnectionError("redis closed the connection")
        t, rest = line[:1], line[1:-2]
        if t == b"+":
            return rest
        if t == b"-":
            raise RespError(rest.decode("utf-8", "replace"))
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.f.read(n + 2)
            return data[:-2]
        if t == b"*":
            n = int(rest)
            if n < 0:
                return None
            return [self._read() for _ in range(n)]
        raise RespError("unexpected RESP reply %r" % line)


class RedisServer:
    """A real redis-server on a free loopback port, in its own temp dir, no persistence."""

    def __init__(self, workdir, port=None, extra_args=(), password=None):
        self.workdir = workdir
        self.password = password  # requirepass: start() authenticates its PING
        self.port = port or free_port()
        self.extra_args = list(extra_args)  # e.g. AOF settings; later options win
        self.proc = None
        self.log = os.path.join(workdir, "redis-%d.log" % self.port)
        os.makedirs(workdir, exist_ok=True)

    @property
    def url(self):
        return "redis://%s:%d" % (LOOPBACK, self.port)

    def start(self, wait_s=10.0):
        argv = ["redis-server", "--port", str(self.port), "--bind", LOOPBACK,
                "--save", "", "--appendonly", "no", "--dir", self.workdir,
                "--protected-mode", "no", "--daemonize", "no",
                "--rdbcompression", "no", "--logfile", self.log] + self.extra_args
        self.proc = spawn(argv, "redis-server :%d" % self.port,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + wait_s
        last = None
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("redis-server exited with %s:\n%s"
                                   % (self.proc.returncode, tail(self.log)))
            try:
                with RespClient(self.port, timeout=1.0) as c:
                    if self.password is not None:
                        c.call("AUTH", self.password)
                    if c.call("PING") == b"PONG":
                        return self
            except (OSError, RespError) as e:
                last = e
            time.sleep(0.05)
        raise RuntimeError("redis-server :%d not answering PING: %r\n%s"
                           % (self.port, last, tail(self.log)))

    def stop(self):
        if self.proc is not None:
            kill_group(self.proc, signal.SIGKILL)
            self.proc = None
        # the port is free again once nothing answers on it
        deadline = time.time() + 5
        while time.time() < deadline:
            try:
                socket.create_connection((LOOPBACK, self.port), timeout=0.2).close()
                time.sleep(0.05)
            except OSError:
                return

    def client(self):
        return RespClient(self.port)

    def dump_everything(self):
        """Every key name and everything stored under it, as raw bytes, per key.

        Values are fetched per type (string, hash, list, set, zset, stream) and, for any
        type, with DUMP too (the server runs with --rdbcompression no, so DUMP holds the
        stored bytes uncompressed): a raw token could not hide in an unexpected type.
        """
        out = {}
        with self.client() as c:
            for db in range(16):
                try:
                    c.call("SELECT", db)
                except RespError:
                    break
                cursor = b"0"
                while True:
                    cursor, keys = c.call("SCAN", cursor, "COUNT", 1000)
                    for k in keys:
                        blob = [k]
                        t = c.call("TYPE", k)
                        try:
                            if t == b"string":
                                blob.append(c.call("GET", k) or b"")
                            elif t == b"hash":
                                blob.extend(c.call("HGETALL", k))
                            elif t == b"list":
                                blob.extend(c.call("LRANGE", k, 0, -1))
                            elif t == b"set":
                                blob.extend(c.call("SMEMBERS", k))
                            elif t == b"zset":
                                blob.extend(c.call("ZRANGE", k, 0, -1, "WITHSCORES"))
                            elif t == b"stream":
                                for entry in c.call("XRANGE", k, "-", "+"):
                                    blob.append(entry[0])
                                    blob.extend(entry[1])
                        except RespError:
                            pass
                        d = c.call("DUMP", k)
                        if d:
                            blob.append(d)
                        out[(db, k)] = b"\0".join(x if isinstance(x, bytes) else str(x).encode()
                                                  for x in blob)
                    if cursor == b"0":
                        break
            c.call("SELECT", 0)
        return out


# --------------------------------------------------------------------------------------
# the fake agent

def wait_ready(proc, err_path, what, wait_s):
    """Waits for a test peer to print "READY <port>" on its stdout; returns the port.
    Kills the peer and raises, with its stderr tail, when it does not within |wait_s|."""
    deadline = time.time() + wait_s
    buf = b""
    while time.time() < deadline:
        r, _, _ = select.select([proc.stdout], [], [], 0.2)
        if r:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
            if b"\n" in buf:
                line = buf.split(b"\n", 1)[0].decode()
                if line.startswith("READY "):
                    return int(line.split()[1])
        if proc.poll() is not None:
            break
    kill_group(proc)
    raise RuntimeError("%s did not become ready: %r\n%s" % (what, buf, tail(err_path)))


def read_jsonl(path):
    """The complete JSON lines of a peer's record file, in order; [] before it exists. A
    last line without its newline is still being written (a long line can reach the file
    in more than one write) and is left for the next read."""
    out = []
    try:
        with open(path, "r", encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n"):
                    break
                line = line.strip()
                if line:
                    out.append(json.loads(line))
    except FileNotFoundError:
        pass
    return out

class FakeAgent:
    """tests/peers/fake_agent.py as a separate process; reads what it recorded."""

    def __init__(self, workdir, mode="ok", extra_args=(), port=None):
        self.workdir = workdir
        self.mode = mode
        self.fixed_port = port  # None: a free port; else this one (an agent restarted)
        tag = uuid.uuid4().hex[:8]
        self.record_path = os.path.join(workdir, "agent-%s-%s.jsonl"
                                        % (mode.replace(":", "_"), tag))
        self.err_path = self.record_path[:-6] + ".stderr"
        self.extra_args = list(extra_args)
        self.proc = None
        self.port = None

    def start(self, wait_s=10.0):
        open(self.record_path, "w").close()
        argv = [PYTHON, FAKE_AGENT, "--port", str(self.fixed_port or 0), "--mode", self.mode,
                "--record", self.record_path] + self.extra_args
        self.err = open(self.err_path, "wb")
        self.proc = spawn(argv, "fake_agent %s" % self.mode,
                          stdout=subprocess.PIPE, stderr=self.err)
        self.port = wait_ready(self.proc, self.err_path, "fake_agent %s" % self.mode, wait_s)
        return self

    def stop(self):
        if self.proc is not None:
            kill_group(self.proc, signal.SIGKILL)
            try:
                self.proc.stdout.close()
            except OSError:
                pass
            self.err.close()
            self.proc = None

    def url(self, path="/"):
        return "http://%s:%d%s" % (LOOPBACK, self.port, path)

    def records(self):
        return read_jsonl(self.record_path)

    def requests(self, method=None):
        rs = [r for r in self.records() if r.get("event") == "request"]
        if method:
            rs = [r for r in rs if r["method"] == method]
        return rs

    def posts(self):
        return self.requests("POST")

    def wait_posts(self, n, timeout=5.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            ps = self.posts()
            if len(ps) >= n:
                return ps
            time.sleep(0.02)
        return self.posts()

    @staticmethod
    def header_values(rec, name):
        return [v for k, v in rec["headers"] if k.lower() == name.lower()]

    @staticmethod
    def header(rec, name):
        vs = FakeAgent.header_values(rec, name)
        return vs[0] if vs else None

    @staticmethod
    def body_bytes(rec):
        return base64.b64decode(rec["body_b64"])

    @staticmethod
    def response_bytes(rec):
        b = rec.get("response_body_b64")
        return base64.b64decode(b) if b is not None else None


# --------------------------------------------------------------------------------------
# switchboard

class StartupError(RuntimeError):
    pass


class Switchboard:
    """One real bin/switchboard process on a free loopback port."""

    def __init__(self, workdir, redis_url, admin_token=None, extra_args=(), threads=2,
                 allow_loopback=True, name="sb"):
        self.workdir = workdir
        self.redis_url = redis_url
        self.admin_token = admin_token or new_token()
        self.extra_args = list(extra_args)
        self.threads = threads
        self.allow_loopback = allow_loopback
        self.name = "%s-%s" % (name, uuid.uuid4().hex[:6])
        self.out_path = os.path.join(workdir, "%s.stdout.log" % self.name)
        self.err_path = os.path.join(workdir, "%s.stderr.log" % self.name)
        self.proc = None
        self.port = None
        self.started_at = None
        self.stopped_at = None
        self.exit_code = None
        os.makedirs(workdir, exist_ok=True)

    def argv(self, port):
        a = [sb_binary(), "--listen", "%s:%d" % (LOOPBACK, port), "--redis", self.redis_url,
             "--admin-token", self.admin_token, "--threads", str(self.threads)]
        if self.allow_loopback:
            a += ["--allow-upstream", "127.0.0.0/8"]
        return a + self.extra_args

    def start(self, wait_s=15.0, port=None, ready=True):
        """Starts the process on |port| (default: a free one) and waits until /readyz
        answers 200, or with |ready| False only until /healthz does (an instance that
        has not loaded its replicas yet)."""
        if not os.access(sb_binary(), os.X_OK):
            raise StartupError("%s is missing or not executable (run `make`)" % sb_binary())
        fixed = port
        for attempt in range(3):
            port = fixed or free_port()
            self.out = open(self.out_path, "ab")
            self.err = open(self.err_path, "ab")
            self.proc = spawn(self.argv(port), "switchboard %s :%d" % (self.name, port),
                              stdout=self.out, stderr=self.err, env=clean_env())
            self.port = port
            self.started_at = time.time()
            SWITCHBOARDS.append(self)
            try:
                self.wait_ready(wait_s, need_ready=ready)
                return self
            except StartupError:
                died = self.proc.poll() is not None
                in_use = "in use" in tail(self.err_path, 5).lower()
                self.kill()
                if died and in_use and attempt < 2 and fixed is None:
                    continue  # lost the free-port race; try another port
                raise

    def wait_ready(self, wait_s=15.0, need_ready=True):
        deadline = time.time() + wait_s
        last = None
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise StartupError("switchboard exited with %s during start-up\n%s"
                                   % (self.proc.returncode, self.diagnostics()))
            try:
                h = request(self, "GET", "/healthz", timeout=1.0)
                if h.status == 200 and not need_ready:
                    return
                if h.status == 200:
                    r = request(self, "GET", "/readyz", timeout=1.0)
                    if r.status == 200:
                        return
                    last = "readyz %d %r" % (r.status, r.body[:200])
                else:
                    last = "healthz %d" % h.status
            except OSError as e:
                last = repr(e)
            time.sleep(0.05)
        raise StartupError("switchboard not ready within %.0fs (%s)\n%s"
                           % (wait_s, last, self.diagnostics()))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def stop(self, timeout=15.0):
        """The graceful-stop contract: SIGTERM, exit code 0. Raises AssertionError if
        not; the process is killed in any case."""
        if self.proc is None:
            return self.exit_code
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise AssertionError("switchboard %s did not exit within %.0fs of SIGTERM\n%s"
                                     % (self.name, timeout, self.diagnostics()))
            self.exit_code = code
            if code != 0:
                raise AssertionError("switchboard %s exited with %s after SIGTERM (want 0)\n%s"
                                     % (self.name, code, self.diagnostics()))
            return code
        finally:
            self.kill()

    def kill(self):
        if self.proc is not None:
            kill_group(self.proc, signal.SIGKILL)
            if self.exit_code is None:
                self.exit_code = self.proc.returncode
            self.proc = None
            self.stopped_at = time.time()
            for f in (self.out, self.err):
                try:
                    f.close()
                except OSError:
                    pass

    def diagnostics(self, n=40):
        return ("---- %s stdout (tail) %s\n%s\n---- %s stderr (tail) %s\n%s"
                % (self.name, self.out_path, tail(self.out_path, n),
                   self.name, self.err_path, tail(self.err_path, n)))

    # ---- logs ----------------------------------------------------------------------
    def log_text(self):
        parts = []
        for p in (self.out_path, self.err_path):
            try:
                with open(p, "rb") as f:
                    parts.append(f.read().decode("utf-8", "replace"))
            except OSError:
                pass
        return "\n".join(parts)

    def log_lines(self):
        """Every JSON object line switchboard wrote to stdout."""
        out = []
        try:
            with open(self.out_path, "rb") as f:
                for line in f:
                    line = line.strip()
                    if not line.startswith(b"{"):
                        continue
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
        except OSError:
            pass
        return out

    def wait_log(self, pred, timeout=3.0):
        deadline = time.time() + timeout
        while True:
            found = [o for o in self.log_lines() if pred(o)]
            if found or time.time() >= deadline:
                return found
            time.sleep(0.03)


# --------------------------------------------------------------------------------------
# HTTP clients

class Resp:
    def __init__(self, status, headers, body, reason=""):
        self.status = status
        self.headers = headers  # http.client.HTTPMessage (case-insensitive get)
        self.body = body
        self.reason = reason

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def header(self, name):
        return self.headers.get(name) if self.headers is not None else None

    def __repr__(self):
        return "<Resp %s %s %r>" % (self.status, dict(self.headers or {}), self.body[:400])


def request(target, method, path, body=None, token=None, headers=None, timeout=10.0):
    """One request on a fresh connection. |target| is a Switchboard or (host, port).
    |body| may be bytes, str or a JSON-able object."""
    if isinstance(target, Switchboard):
        host, port = LOOPBACK, target.port
    else:
        host, port = target
    h = {}
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    elif isinstance(body, str):
        body = body.encode()
    if body is not None and "Content-Type" not in h:
        h["Content-Type"] = "application/json"
    if token is not None:
        h["Authorization"] = "Bearer %s" % token
    if headers:
        h.update(headers)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        data = r.read()
        return Resp(r.status, r.headers, data, r.reason)
    finally:
        conn.close()


def recv_until_closed_or(sock, want, timeout):
    """Reads from |sock| until |want| bytes are present, EOF, or |timeout|."""
    sock.settimeout(timeout)
    buf = b""
    deadline = time.time() + timeout
    while len(buf) < want and time.time() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        except OSError:  # a reset counts as a close
            break
        if not chunk:
            break
        buf += chunk
    return buf


class RawResponse:
    def __init__(self, status, headers, body, raw_head):
        self.status = status
        self.headers = headers  # list of (name, value)
        self.body = body
        self.raw_head = raw_head

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


class RawHTTP:
    """A raw socket to switchboard for robustness tests: send bytes, parse responses."""

    def __init__(self, port, timeout=5.0):
        self.sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buf = b""

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed by switchboard")
        self.buf += chunk

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_response(self, head_request=False):
        """Reads one response (interim 1xx responses are returned as they come)."""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        status_line = self._line()
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise ValueError("not an HTTP status line: %r" % status_line)
        status = int(parts[1])
        headers = []
        while True:
            line = self._line()
            if line == b"":
                break
            k, _, v = line.partition(b":")
            headers.append((k.decode("latin-1").strip(), v.decode("latin-1").strip()))
        r = RawResponse(status, headers, b"", status_line)
        if 100 <= status < 200 or status in (204, 304) or head_request:
            return r
        te = (r.header("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            body = b""
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line() != b"":
                        pass
                    break
                body += self._exact(size)
                self._exact(2)
            r.body = body
        elif r.header("Content-Length") is not None:
            r.body = self._exact(int(r.header("Content-Length")))
        else:
            try:
                while True:
                    self._fill()
            except EOFError:
                pass
            r.body, self.buf = self.buf, b""
        return r


# --------------------------------------------------------------------------------------
# A2A bodies and common calls

def send_v03(message_id=None, text="hello", rid=None, extra_params=None):
    message_id = message_id or "m-" + uuid.uuid4().hex[:12]
    params = {"message": {"kind": "message", "role": "user", "messageId": message_id,
                          "parts": [{"kind": "text", "text": text}]}}
    if extra_params:
        params.update(extra_params)
    return {"jsonrpc": "2.0", "id": rid if rid is not None else "r-" + message_id,
            "method": "message/send", "params": params}


def send_v10(message_id=None, text="hello", rid=None):
    message_id = message_id or "m-" + uuid.uuid4().hex[:12]
    return {"jsonrpc": "2.0", "id": rid if rid is not None else "r-" + message_id,
            "method": "SendMessage",
            "params": {"message": {"messageId": message_id, "role": "ROLE_USER",
                                   "parts": [{"text": text}]}}}


def send_stream_v03(message_id=None, text="hello", rid=None):
    body = send_v03(message_id, text, rid)
    body["method"] = "message/stream"
    return body


def send_stream_v10(message_id=None, text="hello", rid=None):
    body = send_v10(message_id, text, rid)
    body["method"] = "SendStreamingMessage"
    return body


class BlackholeListener:
    """A listening socket that never accepts, its accept queue already full, so the
    kernel drops every further SYN: a connect to it can only time out."""

    def __init__(self):
        self.srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.srv.bind((LOOPBACK, 0))
        self.srv.listen(0)
        self.port = self.srv.getsockname()[1]
        self.fillers = []
        for _ in range(3):
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            c.setblocking(False)
            c.connect_ex((LOOPBACK, self.port))
            self.fillers.append(c)
        time.sleep(0.2)

    def url(self, path="/"):
        return "http://%s:%d%s" % (LOOPBACK, self.port, path)

    def close(self):
        for c in self.fillers:
            c.close()
        self.srv.close()


def a2a(sb, ws, body, token=None, headers=None, timeout=15.0):
    token = sb.admin_token if token is None else token
    return request(sb, "POST", "/workspaces/%s/a2a" % ws, body=body, token=token,
                   headers=headers, timeout=timeout)


def register(sb, ws, url=None, token=None, timeout=15.0, **fields):
    body = {"workspace_id": ws}
    if url is not None:
        body["url"] = url
    body.update(fields)
    return request(sb, "POST", "/registry/register", body=body,
                   token=sb.admin_token if token is None else token, timeout=timeout)


def heartbeat(sb, ws, token=None, **fields):
    body = {"workspace_id": ws}
    body.update(fields)
    return request(sb, "POST", "/registry/heartbeat", body=body,
                   token=sb.admin_token if token is None else token)


def mint(sb, ws):
    r = request(sb, "POST", "/admin/workspaces/%s/tokens" % ws, body={},
                token=sb.admin_token)
    assert r.status == 201, "mint for %s: %r" % (ws, r)
    return r.json()


def is_snake_case(s):
    return isinstance(s, str) and re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", s) is not None


def assert_error_body(r, code=None):
    """Non-A2A routes: {"error":{"code":snake_case,"message":text}}."""
    try:
        j = r.json()
    except ValueError:
        raise AssertionError("error body is not JSON: %r" % r)
    assert isinstance(j, dict) and isinstance(j.get("error"), dict), "error body shape: %r" % j
    assert is_snake_case(j["error"].get("code")), "error.code not snake_case: %r" % j
    assert isinstance(j["error"].get("message"), str) and j["error"]["message"], \
        "error.message missing: %r" % j
    if code is not None:
        assert j["error"]["code"] == code, "want error code %s: %r" % (code, j)
    return j


DECISION_FIELDS = ("time", "message_id", "workspace", "kind", "source", "mode", "reason",
                   "detail", "duration_ms")


def decision_lines(sb, message_id, timeout=3.0):
    """The delivery decision log lines (SPEC §5.4) for |message_id|."""
    return sb.wait_log(lambda o: o.get("message_id") == message_id and "reason" in o
                       and "mode" in o, timeout=timeout)


def assert_decision_logged(sb, message_id, ws, reason, kind=None, source=None):
    lines = decision_lines(sb, message_id)
    assert lines, "no delivery decision line with message_id %r in the log" % message_id
    line = lines[-1]
    missing = [f for f in DECISION_FIELDS if f not in line]
    assert not missing, "decision line lacks %s: %r" % (missing, line)
    if reason is None:  # a push: no fallback reason (null or empty)
        assert not line["reason"], "a delivered push logged reason %r: %r" % (
            line["reason"], line)
    else:
        assert line["reason"] == reason, "logged reason %r, want %r: %r" % (
            line["reason"], reason, line)
    assert line["workspace"] == ws, line
    if kind is not None:
        assert line["kind"] == kind, line
    if source is not None:
        assert line["source"] == source, line
    assert isinstance(line["duration_ms"], (int, float)) and line["duration_ms"] >= 0, line
    assert isinstance(line["detail"], str), line
    return line


def is_v10(body):
    return "/" not in body.get("method", "")


def parse_sse(data):
    """The JSON objects of every "data:" event of a text/event-stream body."""
    events = []
    for block in data.decode("utf-8").replace("\r\n", "\n").split("\n\n"):
        lines = [ln[5:].lstrip() for ln in block.split("\n") if ln.startswith("data:")]
        if lines:
            events.append(json.loads("\n".join(lines)))
    return events


def fallback_response(r, body):
    """The JSON-RPC response of a poll answer: the body, or its one SSE event for a
    stream request (SPEC §4.3)."""
    if body.get("method") in ("message/stream", "SendStreamingMessage"):
        ctype = (r.header("Content-Type") or "").lower()
        assert ctype.startswith("text/event-stream"), "a stream falls back as SSE: %r" % r
        events = parse_sse(r.body)
        assert len(events) == 1, "one SSE event with the Task, got %r" % (events,)
        return events[0]
    return r.json()


def task_of(j, body):
    """The A2A Task of a poll answer's JSON-RPC response, checked for its version's shape."""
    result = j.get("result")
    assert isinstance(result, dict), "result must be a Task: %r" % j
    if is_v10(body):
        assert isinstance(result.get("task"), dict), "v1.0 wraps the Task: %r" % j
        return result["task"]
    return result


def fallback_detail(j, body):
    return task_of(j, body)["metadata"]["switchboard"]["detail"]


def assert_fallback(sb, r, reason, body, ws, kind=None, source=None, check_queued=True):
    """A message that was not pushed (SPEC §4.3): HTTP 200, X-Delivery-Mode: poll,
    X-Delivery-Reason, a JSON-RPC result holding an A2A Task in state submitted (v0.3
    shape, or {"task": ...} with TASK_STATE_SUBMITTED for v1.0) whose metadata.switchboard
    names the reason and a one-line detail; the decision log line (mode poll) carries the
    same reason; and the message is in the workspace's queue (peek), unless
    |check_queued| is False. Returns the JSON-RPC response."""
    assert r.status == 200, "want 200 (%s), got %r" % (reason, r)
    assert r.header("X-Delivery-Mode") == "poll", r
    assert r.header("X-Delivery-Reason") == reason, "X-Delivery-Reason %r, want %r: %r" % (
        r.header("X-Delivery-Reason"), reason, r)
    j = fallback_response(r, body)
    assert j.get("jsonrpc") == "2.0", j
    assert "error" not in j, j
    assert j.get("id") == body.get("id"), "the answer must echo the request id: %r" % j
    task = task_of(j, body)
    assert isinstance(task.get("id"), str) and task["id"].startswith("sbtask_"), task
    assert isinstance(task.get("contextId"), str) and task["contextId"], task
    status = task.get("status")
    want_state = "TASK_STATE_SUBMITTED" if is_v10(body) else "submitted"
    assert isinstance(status, dict) and status.get("state") == want_state, task
    assert isinstance(status.get("timestamp"), str), task
    if not is_v10(body):
        assert task.get("kind") == "task", task
    meta = task.get("metadata", {}).get("switchboard")
    assert isinstance(meta, dict), task
    assert meta.get("delivery_mode") == "poll", meta
    assert meta.get("reason") == reason, meta
    assert isinstance(meta.get("detail"), str) and meta["detail"], meta
    assert "\n" not in meta["detail"], "detail must be one line: %r" % meta
    assert isinstance(meta.get("queued_at"), str), meta
    mid = body["params"]["message"]["messageId"]
    line = assert_decision_logged(sb, mid, ws, reason, kind=kind, source=source)
    assert line["mode"] == "poll", line
    # the line names the queued copy: switchboard's task and the queue entry
    assert line.get("task_id") == task["id"], line
    assert str(line.get("queue_id", "")).startswith("q_"), line
    if check_queued:
        p = inbox_peek(sb, ws, max=100)
        assert p.status == 200, p
        mine = [m for m in p.json()["messages"] if m["task_id"] == task["id"]]
        assert len(mine) == 1, "the message must be queued: %r" % p.json()
        assert mine[0]["message_id"] == mid and mine[0]["reason"] == reason, mine
        assert mine[0]["request"] == body, "the original request is stored"
    return j


def assert_undeliverable(r, reason, body, status=503):
    """Neither pushed nor queued: HTTP 503 + Retry-After (or 502 for a call that is not
    a message), X-Delivery-Reason, JSON-RPC error -32050 whose data names the reason."""
    assert r.status == status, "want %d (%s), got %r" % (status, reason, r)
    if status == 503:
        ra = r.header("Retry-After")
        assert ra is not None and ra.isdigit(), r
    assert r.header("X-Delivery-Reason") == reason, r
    assert r.header("X-Delivery-Mode") != "poll", r
    j = r.json()
    assert j.get("jsonrpc") == "2.0" and "result" not in j, j
    assert j.get("id") == body.get("id"), j
    err = j.get("error")
    assert isinstance(err, dict) and err.get("code") == -32050, j
    assert reason in err.get("message", ""), err
    data = err.get("data")
    assert isinstance(data, dict) and data.get("reason") == reason, j
    assert isinstance(data.get("detail"), str) and data["detail"], j
    return j


# ---- inbox and tasks ------------------------------------------------------------------

def _query(**params):
    q = "&".join("%s=%s" % (k, v) for k, v in params.items() if v is not None)
    return "?" + q if q else ""


def inbox_lease(sb, ws, token=None, max=None, wait_s=None, lease_s=None, timeout=15.0):
    return request(sb, "GET", "/workspaces/%s/inbox%s" % (
        ws, _query(max=max, wait_s=wait_s, lease_s=lease_s)),
        token=sb.admin_token if token is None else token, timeout=timeout)


def inbox_peek(sb, ws, token=None, max=None):
    return request(sb, "GET", "/workspaces/%s/inbox/peek%s" % (ws, _query(max=max)),
                   token=sb.admin_token if token is None else token)


def inbox_ack(sb, ws, qid, result=None, token=None):
    body = {"result": result} if result is not None else None
    return request(sb, "POST", "/workspaces/%s/inbox/%s/ack" % (ws, qid), body=body,
                   token=sb.admin_token if token is None else token)


def inbox_nack(sb, ws, qid, token=None):
    return request(sb, "POST", "/workspaces/%s/inbox/%s/nack" % (ws, qid),
                   token=sb.admin_token if token is None else token)


def task_call(sb, ws, method, task_id, token=None, rid=None):
    """tasks/get | tasks/cancel (v0.3 params.id) or GetTask | CancelTask (v1.0 params.name)."""
    params = {"id": task_id} if "/" in method else {"name": "tasks/%s" % task_id}
    body = {"jsonrpc": "2.0", "id": rid or "t-" + uuid.uuid4().hex[:8], "method": method,
            "params": params}
    return a2a(sb, ws, body, token=token)


def queue_depth(sb, ws):
    p = inbox_peek(sb, ws, max=100)
    assert p.status == 200, p
    return p.json()["ready"]


def assert_pushed(r, agent_record=None):
    """A delivered push: 2xx relayed with X-Delivery-Mode: push, body byte for byte."""
    assert 200 <= r.status < 300, "want a pushed 2xx, got %r" % r
    assert r.header("X-Delivery-Mode") == "push", r
    if agent_record is not None:
        assert r.status == agent_record["response_status"], (r, agent_record)
        assert r.body == FakeAgent.response_bytes(agent_record), \
            "relayed body differs from the agent's: %r vs %r" % (
                r.body, FakeAgent.response_bytes(agent_record))
