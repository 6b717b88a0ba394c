"""Fixtures for switchboard's integration tests (see README.md in this directory).

Scopes, chosen to keep the suite fast without letting tests interfere:
  redis, sb          one redis-server and one switchboard per test module; tests on them
                     use unique workspace ids (harness.unique_ws)
  agent              function scope: a factory of fake agents, all stopped after the test
  make_sb            function scope: extra switchboard instances with special flags
  module_make_sb     the same, shared by the tests of one module
Every finalizer stops what it started even when the test failed; switchboard is stopped
with SIGTERM and must exit 0 (the graceful-stop contract), then killed regardless.
At session end no started process may survive (checked by a fixture and by a hook).
"""

import os
import signal
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


# --------------------------------------------------------------------------------------
# no leftovers

def _reap_all():
    survivors = harness.leftovers()
    for p, _ in survivors:
        harness.kill_group(p, signal.SIGKILL)
    return survivors


@pytest.fixture(scope="session", autouse=True)
def _no_leftover_processes():
    yield
    # Session fixtures are torn down last: every module/function finalizer already ran.
    survivors = _reap_all()
    assert not survivors, "processes outlived their fixtures (now killed): %s" % (
        ", ".join("%s pid=%d" % (d, p.pid) for p, d in survivors))


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    # Safety net for interrupted runs (-x, Ctrl-C): runs after pytest's own fixture
    # teardown (trylast), kills anything still alive and makes it visible.
    survivors = _reap_all()
    if survivors:
        sys.stderr.write("\nswitchboard integration: killed leftover processes: %s\n" % (
            ", ".join("%s pid=%d" % (d, p.pid) for p, d in survivors)))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# --------------------------------------------------------------------------------------
# diagnostics: a failing test report carries the tail of every switchboard it could see

def pytest_runtest_setup(item):
    item._sb_t0 = time.time()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed:
        return
    t0 = getattr(item, "_sb_t0", 0)
    for sb in harness.SWITCHBOARDS:
        if sb.started_at is None:
            continue
        if sb.stopped_at is not None and sb.stopped_at < t0:
            continue
        rep.sections.append(("switchboard %s log tail (%s)" % (sb.name, rep.when),
                             sb.diagnostics(60)))


# --------------------------------------------------------------------------------------
# fixtures

@pytest.fixture(scope="module")
def workdir(tmp_path_factory, request):
    return str(tmp_path_factory.mktemp(request.module.__name__.replace(".", "_")))


@pytest.fixture(scope="module")
def redis(workdir):
    r = harness.RedisServer(os.path.join(workdir, "redis"))
    try:
        r.start()
        yield r
    finally:
        r.stop()


def _stop_all(instances):
    errors = []
    for sb in instances:
        try:
            sb.stop()
        except AssertionError as e:
            errors.append(str(e))
        finally:
            sb.kill()
    if errors:
        raise AssertionError("\n\n".join(errors))


@pytest.fixture
def own_redis(workdir):
    """A Redis of the test's own: no switchboard of another test shares it (none may hold
    its scheduler lease or claim its notifications)."""
    r = harness.RedisServer(os.path.join(workdir, "redis-%d" % harness.free_port()))
    r.start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture(scope="module")
def sb(workdir, redis):
    """The module's switchboard: --threads 2 --allow-upstream 127.0.0.0/8, defaults else."""
    inst = harness.Switchboard(os.path.join(workdir, "sb"), redis.url, name="sb")
    try:
        inst.start()
        yield inst
    finally:
        _stop_all([inst])


class _SbFactory:
    def __init__(self, workdir, redis):
        self.workdir = workdir
        self.redis = redis
        self.instances = []

    def __call__(self, extra_args=(), redis_url=None, allow_loopback=True,
                 admin_token=None, threads=2, name="sbx"):
        inst = harness.Switchboard(os.path.join(self.workdir, "extra"),
                                   redis_url or self.redis.url, admin_token=admin_token,
                                   extra_args=extra_args, threads=threads,
                                   allow_loopback=allow_loopback, name=name)
        self.instances.append(inst)
        return inst.start()


@pytest.fixture
def make_sb(workdir, redis):
    f = _SbFactory(workdir, redis)
    try:
        yield f
    finally:
        _stop_all(f.instances)


@pytest.fixture(scope="module")
def module_make_sb(workdir, redis):
    f = _SbFactory(workdir, redis)
    try:
        yield f
    finally:
        _stop_all(f.instances)


class _AgentFactory:
    def __init__(self, workdir):
        self.workdir = workdir
        self.agents = []

    def __call__(self, mode="ok", *extra_args):
        a = harness.FakeAgent(os.path.join(self.workdir, "agents"), mode, extra_args)
        os.makedirs(a.workdir, exist_ok=True)
        self.agents.append(a)
        return a.start()


@pytest.fixture
def agent(workdir):
    f = _AgentFactory(workdir)
    try:
        yield f
    finally:
        for a in f.agents:
            a.stop()
