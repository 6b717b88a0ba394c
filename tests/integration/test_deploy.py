"""deploy/: the Prometheus rules and config, and the Grafana dashboard, checked against
promtool and against a live /metrics scrape of bin/switchboard.

A metric renamed in metrics.c without the dashboard and alerts following fails here, and
so does PromQL that does not parse (the dashboard's queries are checked by promtool as
recording rules, Grafana variables replaced by sample values).
"""

import json
import os
import re
import subprocess

import pytest

import promtext
from harness import REPO

DEPLOY = os.path.join(REPO, "deploy")
DASHBOARD = os.path.join(DEPLOY, "grafana", "switchboard.json")
ALERTS = os.path.join(DEPLOY, "prometheus", "alerts.yml")
ALERTS_TEST = os.path.join(DEPLOY, "prometheus", "alerts_test.yml")
PROM_CONFIG = os.path.join(DEPLOY, "prometheus", "prometheus.yml")
METRIC_RE = re.compile(r"\b(switchboard_[a-zA-Z0-9_]+)")
GRAFANA_VARS = {"$__rate_interval": "5m", "$__range": "6h", "$__interval": "1m",
                "$job": "switchboard", "$instance": ".*"}


def promtool_or_skip():
    tool = promtext.promtool()
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool not found — CI must have it (`make test-deps`)")
        pytest.skip("promtool not found (`make test-deps` extracts it from Debian's prometheus)")
    return tool


def run_promtool(*args):
    p = subprocess.run([promtool_or_skip()] + list(args), capture_output=True, timeout=60)
    out = p.stdout.decode() + p.stderr.decode()
    assert p.returncode == 0, "promtool %s failed:\n%s" % (" ".join(args), out)
    return out


def dashboard():
    with open(DASHBOARD, encoding="utf-8") as f:
        return json.load(f)


def all_panels(d):
    for p in d["panels"]:
        yield p
        for inner in p.get("panels", []):
            yield inner


def dashboard_exprs(d):
    return [(p["title"], t["expr"]) for p in all_panels(d) for t in p.get("targets", [])]


def alert_exprs():
    """The expr of every rule in alerts.yml (a small reader: exprs are one line or a
    '|' block, as written there)."""
    exprs, lines = [], open(ALERTS, encoding="utf-8").read().split("\n")
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)expr:\s*(.*)$", lines[i])
        if m:
            indent, rest = len(m.group(1)), m.group(2)
            if rest.strip() == "|":
                block = []
                i += 1
                while i < len(lines) and (not lines[i].strip() or
                                          len(lines[i]) - len(lines[i].lstrip()) > indent):
                    block.append(lines[i].strip())
                    i += 1
                exprs.append(" ".join(block))
                continue
            exprs.append(rest)
        i += 1
    return exprs


def known_names(e):
    """Every series name a query may use: families and their histogram suffixes."""
    names = set(e.families)
    for fam, typ in e.families.items():
        if typ == "histogram":
            names.update(fam + s for s in promtext.HIST_SUFFIXES)
    return names


# ---- Prometheus ------------------------------------------------------------------------

def test_promtool_check_rules():
    out = run_promtool("check", "rules", ALERTS)
    assert "SUCCESS" in out


def test_promtool_test_rules():
    run_promtool("test", "rules", ALERTS_TEST)


def test_promtool_check_config():
    run_promtool("check", "config", PROM_CONFIG)


def test_alert_metrics_exist_in_a_live_scrape(sb):
    _, e = promtext.scrape(sb)
    names = known_names(e)
    exprs = alert_exprs()
    assert len(exprs) >= 6, exprs
    used = {n for x in exprs for n in METRIC_RE.findall(x)}
    for required in ("switchboard_queue_oldest_age_seconds", "switchboard_poll_fallbacks_total",
                     "switchboard_messages_total", "switchboard_redis_up",
                     "switchboard_circuits_open"):
        assert required in used, "alerts.yml does not use %s" % required
    missing = sorted(used - names)
    assert not missing, "alerts.yml uses metrics /metrics does not export: %s" % missing


# ---- Grafana ---------------------------------------------------------------------------

def test_dashboard_metrics_exist_in_a_live_scrape(sb):
    _, e = promtext.scrape(sb)
    names = known_names(e)
    used = {n for _, x in dashboard_exprs(dashboard()) for n in METRIC_RE.findall(x)}
    missing = sorted(used - names)
    assert not missing, "the dashboard queries metrics /metrics does not export: %s" % missing
    # what operators look for first is on it
    for required in ("switchboard_messages_total", "switchboard_poll_fallbacks_total",
                     "switchboard_queue_depth", "switchboard_queue_oldest_age_seconds",
                     "switchboard_push_duration_seconds_bucket", "switchboard_circuits_open",
                     "switchboard_redis_up"):
        assert required in used, "the dashboard does not show %s" % required
    assert any("histogram_quantile" in x and "switchboard_push_duration_seconds_bucket" in x
               for _, x in dashboard_exprs(dashboard())), "push latency quantiles"


def test_dashboard_queries_parse(tmp_path):
    """Every dashboard query, variables substituted, as a recording rule for promtool."""
    exprs = dashboard_exprs(dashboard())
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, (title, x) in enumerate(exprs):
        for var, val in GRAFANA_VARS.items():
            x = x.replace(var, val)
        assert "$" not in x, "unknown Grafana variable in %r: %s" % (title, x)
        lines += ["      - record: dashboard:query_%d" % i, "        expr: %s" % json.dumps(x)]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text("\n".join(lines) + "\n")
    out = run_promtool("check", "rules", str(path))
    assert "%d rules found" % len(exprs) in out, out


def test_dashboard_structure():
    d = dashboard()
    assert d["title"] and d["uid"] and isinstance(d["schemaVersion"], int)
    variables = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= variables
    ids = [p["id"] for p in all_panels(d)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in all_panels(d):
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"] and p.get("description"), p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            for var in re.findall(r"\$\{?([a-zA-Z_]+)", t["expr"]):
                assert var in variables or "$" + var in GRAFANA_VARS, (p["title"], var)
