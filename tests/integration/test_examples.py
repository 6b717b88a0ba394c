"""examples/: each example for agent authors runs here against a real switchboard.

  examples/js-agent        the A2A JS SDK agent: registers, answers v0.3 and v1.0 pushes,
                           refuses requests without the inbound secret, heartbeats with
                           active_tasks, registers again after a 404
  examples/poll-consumer   lease -> handle -> ack / nack, backing off on 503 Retry-After
  examples/platform-sender push answers, submitted tasks followed with tasks/get, 503s
                           retried with the same messageId

The JS agent needs node and its node_modules (`make test` runs `npm ci` from the
lockfile). Without them the test is skipped locally and fails under CI (CI=true).
"""

import json
import os
import shutil
import subprocess
import threading
import time

import pytest

import harness
from harness import (PYTHON, REPO, RedisServer, Switchboard, a2a, clean_env, inbox_peek,
                     mint, register, request, send_v03, send_v10, spawn, task_call, unique_ws,
                     wait_ready)

EXAMPLES = os.path.join(REPO, "examples")
JS_AGENT = os.path.join(EXAMPLES, "js-agent")
CONSUMER = os.path.join(EXAMPLES, "poll-consumer", "consumer.py")
SENDER = os.path.join(EXAMPLES, "platform-sender", "send.py")


def missing(what, hint):
    """Skips a test whose tool is absent on a developer's machine; fails it in CI."""
    msg = "%s missing (%s)" % (what, hint)
    if os.environ.get("CI"):
        pytest.fail(msg + " — CI must have it")
    pytest.skip(msg)


def sb_url(sb):
    return "http://127.0.0.1:%d" % sb.port


def wait_until(pred, timeout, step=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


def log_events(path):
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
    except FileNotFoundError:
        pass
    return out


class Example:
    """An example program as a separate process; its stderr (JSON lines) in a file."""

    def __init__(self, workdir, name, argv, env, ready_line=False):
        os.makedirs(workdir, exist_ok=True)
        self.err_path = os.path.join(workdir, "%s-%s.stderr" % (name, unique_ws("p")))
        self.err = open(self.err_path, "wb")
        self.proc = spawn(argv, name, stdout=subprocess.PIPE, stderr=self.err,
                          env=clean_env(env), cwd=REPO)
        self.port = wait_ready(self.proc, self.err_path, name, 20.0) if ready_line else None

    def events(self, name=None):
        ev = log_events(self.err_path)
        return [e for e in ev if name is None or e.get("event") == name]

    def wait_event(self, name, timeout, n=1):
        return wait_until(lambda: len(self.events(name)) >= n and self.events(name), timeout)

    def finish(self, timeout):
        """Waits for the exit; returns (exit code, stdout)."""
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            harness.kill_group(self.proc)
            raise AssertionError("%s did not finish within %ss:\n%s"
                                 % (self.proc.args, timeout, harness.tail(self.err_path)))
        return self.proc.returncode, out.decode()

    def stop(self):
        harness.kill_group(self.proc)
        self.err.close()


@pytest.fixture
def examples(workdir):
    started = []

    def start(name, argv, env, ready_line=False):
        e = Example(os.path.join(workdir, "examples"), name, argv, env, ready_line)
        started.append(e)
        return e
    yield start
    for e in started:
        e.stop()


@pytest.fixture
def own_redis_sb(workdir):
    """A Redis and a switchboard of the test's own: the test stops and restarts Redis."""
    r = RedisServer(os.path.join(workdir, "redis-" + unique_ws("x")))
    r.start()
    sb = Switchboard(os.path.join(workdir, "sb-own"), r.url, name="sb-ex")
    try:
        sb.start()
        yield r, sb
    finally:
        try:
            sb.stop()
        finally:
            sb.kill()
            r.stop()


# ---- the A2A JS SDK agent -------------------------------------------------------------

def js_agent(examples, sb, ws, token, token_file=None, **env):
    node = shutil.which("node")
    if node is None:
        missing("node", "Debian package nodejs")
    if not os.path.isdir(os.path.join(JS_AGENT, "node_modules", "@a2a-js", "sdk")):
        missing("examples/js-agent/node_modules", "run `npm ci` in examples/js-agent, or `make test`")
    e = {"SWITCHBOARD_URL": sb_url(sb), "WORKSPACE_ID": ws, "AGENT_PORT": "0"}
    if token_file:
        with open(token_file, "w") as f:
            f.write(token + "\n")
        e["SWITCHBOARD_TOKEN_FILE"] = token_file
    else:
        e["SWITCHBOARD_TOKEN"] = token
    e.update({k: str(v) for k, v in env.items()})
    return examples("js-agent " + ws, [node, os.path.join(JS_AGENT, "agent.mjs")], e,
                    ready_line=True)


def reply_text(result):
    """The text of an agent's Message answer, v0.3 or v1.0."""
    msg = result.get("message", result)
    return " ".join(p.get("text", "") for p in msg["parts"])


def test_js_agent_registers_and_answers_v03_and_v10_pushes(sb, examples):
    ws = unique_ws("js")
    token = mint(sb, ws)["token"]
    agent = js_agent(examples, sb, ws, token)

    rec = request(sb, "GET", "/registry/%s" % ws, token=token)
    assert rec.status == 200, rec
    j = rec.json()
    assert j["url"] == "http://127.0.0.1:%d/" % agent.port and j["delivery_mode"] == "push", j
    reg = agent.events("registered")[0]
    assert reg["probe"]["reachable"] and reg["probe"]["matches"] is True, reg

    r = a2a(sb, ws, send_v03(text="hello"), headers={"X-Switchboard-User": "user-1"})
    assert r.status == 200 and r.header("X-Delivery-Mode") == "push", r
    assert reply_text(r.json()["result"]) == "echo: hello", r

    r = a2a(sb, ws, send_v10(text="hi v1"), headers={"A2A-Version": "1.0"})
    assert r.status == 200 and r.header("X-Delivery-Mode") == "push", r
    assert reply_text(r.json()["result"]) == "echo: hi v1", r

    pushes = agent.wait_event("push", 3, n=2)
    assert [p["kind"] for p in pushes] == ["chat", "chat"], pushes


def test_js_agent_refuses_requests_without_the_inbound_secret(sb, examples, tmp_path):
    ws = unique_ws("js")
    token = mint(sb, ws)["token"]
    # the token from a file, as compose.yaml passes it (a container secret)
    agent = js_agent(examples, sb, ws, token, token_file=str(tmp_path / "token"))
    target = ("127.0.0.1", agent.port)
    body = send_v03(text="not from switchboard")
    assert request(target, "POST", "/", body=body).status == 401
    assert request(target, "POST", "/", body=body, token="sbs_" + "0" * 64).status == 401
    assert request(target, "POST", "/", body=body, token=token).status == 401
    # the card stays public: switchboard's registration probe reads it without a secret
    card = request(target, "GET", "/.well-known/agent-card.json")
    assert card.status == 200 and card.json()["name"], card
    assert len(agent.events("push_refused")) == 3
    assert not agent.events("push")


def test_js_agent_heartbeats_active_tasks_and_reregisters_after_404(sb, examples):
    ws = unique_ws("js")
    token = mint(sb, ws)["token"]
    # lease 3 s: a heartbeat every second; each answer takes 2.5 s
    agent = js_agent(examples, sb, ws, token, LEASE_S=3, ECHO_DELAY_MS=2500)

    def active_tasks():
        return request(sb, "GET", "/registry/%s" % ws, token=token).json().get("active_tasks")

    answer = {}
    t = threading.Thread(target=lambda: answer.setdefault("r", a2a(sb, ws, send_v03(text="slow"))))
    t.start()
    try:
        assert wait_until(lambda: active_tasks() == 1, 2.4, 0.05), \
            "no heartbeat reported the push in progress (active_tasks=%r)" % active_tasks()
    finally:
        t.join(10)
    assert answer["r"].status == 200 and answer["r"].header("X-Delivery-Mode") == "push"
    assert wait_until(lambda: active_tasks() == 0, 2.5), "active_tasks never went back to 0"

    # The registration disappears (deleted, or Redis lost it): the next heartbeat gets
    # 404 and the agent registers again — with a new inbound secret, which it then uses.
    assert request(sb, "DELETE", "/registry/%s" % ws, token=token).status == 204
    assert agent.wait_event("heartbeat_not_registered", 3), "no 404 seen by a heartbeat"
    assert agent.wait_event("registered", 3, n=2), "the agent did not register again"
    assert wait_until(lambda: request(sb, "GET", "/registry/%s" % ws, token=token).status == 200, 2)
    r = a2a(sb, ws, send_v03(text="back"))
    assert r.status == 200 and r.header("X-Delivery-Mode") == "push", r
    assert reply_text(r.json()["result"]) == "echo: back"


# ---- the poll-mode consumer -----------------------------------------------------------

def consumer(examples, sb, ws, token, *args):
    return examples("consumer " + ws, [PYTHON, CONSUMER, "--workspace", ws, "--wait-s", "2"]
                    + list(args), {"SWITCHBOARD_URL": sb_url(sb), "SWITCHBOARD_TOKEN": token})


def test_poll_consumer_acks_results_and_nacks_failures(sb, examples):
    ws = unique_ws("poll")
    token = mint(sb, ws)["token"]
    tasks = {}
    for text in ("one", "two", "fail three"):
        r = a2a(sb, ws, send_v03(text=text))
        assert r.status == 200 and r.header("X-Delivery-Mode") == "poll", r
        tasks[text] = r.json()["result"]["id"]

    c = consumer(examples, sb, ws, token, "--register-poll", "--max-messages", "3")
    code, _ = c.finish(20)
    assert code == 0, harness.tail(c.err_path)
    assert c.events("registered")[0]["delivery_mode"] == "poll"
    assert request(sb, "GET", "/registry/%s" % ws, token=token).json()["delivery_mode"] == "poll"

    for text in ("one", "two"):
        t = task_call(sb, ws, "tasks/get", tasks[text]).json()["result"]
        assert t["status"]["state"] == "completed", t
        assert t["status"]["message"]["parts"][0]["text"] == "echo: " + text, t
    t = task_call(sb, ws, "tasks/get", tasks["fail three"]).json()["result"]
    assert t["status"]["state"] == "submitted", t  # nacked: queued again, not lost
    assert t["metadata"]["switchboard"]["delivery_count"] == 1, t
    nacked = c.events("nacked")
    assert len(nacked) == 1 and nacked[0]["status"] == "queued", nacked
    assert inbox_peek(sb, ws).json()["ready"] == 1


def test_poll_consumer_backs_off_on_503_and_resumes(own_redis_sb, examples):
    redis, sb = own_redis_sb
    ws = unique_ws("poll")
    # The admin token: the workspace token would die with the Redis restarted empty.
    c = consumer(examples, sb, ws, sb.admin_token, "--max-messages", "1")
    assert c.wait_event("consuming", 5)
    redis.stop()
    ev = c.wait_event("inbox_unavailable", 10)
    assert ev, "the consumer never saw a 503:\n" + harness.tail(c.err_path)
    assert isinstance(ev[0]["retry_after"], int) and ev[0]["sleep_s"] >= ev[0]["retry_after"], ev
    assert c.proc.poll() is None, "the consumer gave up on a 503"

    redis.start()
    body = send_v03(text="after the outage")
    deadline = time.time() + 10
    while True:  # until switchboard has its Redis back
        r = a2a(sb, ws, body)
        if r.status == 200 or time.time() > deadline:
            break
        time.sleep(0.2)
    assert r.status == 200 and r.header("X-Delivery-Mode") == "poll", r
    code, _ = c.finish(20)
    assert code == 0, harness.tail(c.err_path)
    acked = c.events("acked")
    assert [a["message_id"] for a in acked] == [body["params"]["message"]["messageId"]], acked


# ---- the platform-side sender ---------------------------------------------------------

def sender(examples, sb, ws, text, *args, token=None):
    return examples("sender " + ws, [PYTHON, SENDER, ws, text, "--poll-interval", "0.2",
                                     "--timeout", "20"] + list(args),
                    {"SWITCHBOARD_URL": sb_url(sb),
                     "SWITCHBOARD_ADMIN_TOKEN": token or sb.admin_token})


def test_sender_relays_a_push_answer(sb, agent, examples):
    ws = unique_ws("send")
    a = agent("ok")
    assert register(sb, ws, a.url()).status == 200
    s = sender(examples, sb, ws, "hi there", "--user", "user-7")
    code, out = s.finish(20)
    assert code == 0, harness.tail(s.err_path)
    res = json.loads(out)
    assert res["mode"] == "push" and res["reason"] is None and res["task_id"] is None, res
    assert res["text"] == "echo: hi there", res
    post = a.wait_posts(1)[0]
    assert a.header(post, "X-Switchboard-User") == "user-7"
    assert a.header(post, "X-Switchboard-Message-Id") == res["message_id"]


def test_sender_follows_a_submitted_task_to_completion(sb, examples):
    ws = unique_ws("send")
    token = mint(sb, ws)["token"]
    assert register(sb, ws, delivery_mode="poll").status == 200
    s = sender(examples, sb, ws, "queued please", "--user", "user-8")
    assert s.wait_event("sent", 5), harness.tail(s.err_path)
    consumer(examples, sb, ws, token, "--max-messages", "1")
    code, out = s.finish(20)
    assert code == 0, harness.tail(s.err_path)
    res = json.loads(out)
    assert res["mode"] == "poll" and res["reason"] == "poll_mode", res
    assert res["task_id"].startswith("sbtask_") and res["state"] == "completed", res
    assert res["text"] == "echo: queued please", res
    states = [e["state"] for e in s.events("task_state")]
    assert states and states[-1] == "completed", states


def test_sender_retries_503_with_the_same_message_id(own_redis_sb, examples):
    redis, sb = own_redis_sb
    ws = unique_ws("send")
    redis.stop()
    s = sender(examples, sb, ws, "during the outage")
    sent = s.wait_event("sent", 10, n=2)
    assert sent and all(e["status"] == 503 for e in sent), harness.tail(s.err_path)
    redis.start()
    consumer(examples, sb, ws, sb.admin_token, "--max-messages", "1")
    code, out = s.finish(25)
    assert code == 0, harness.tail(s.err_path)
    res = json.loads(out)
    sent = s.events("sent")
    assert len(sent) >= 3 and sent[-1]["status"] == 200, sent
    assert {e["message_id"] for e in sent} == {res["message_id"]}, sent
    assert res["mode"] == "poll" and res["state"] == "completed", res
    assert res["text"] == "echo: during the outage", res
    rec = request(sb, "GET", "/workspaces/%s/messages/%s" % (ws, res["message_id"]),
                  token=sb.admin_token)
    assert rec.status == 200 and rec.json()["state"] == "acked", rec
