"""promtext.py — a strict parser of Prometheus text format 0.0.4 for the metrics tests.

    scrape(sb)          GET /metrics without a token -> (Resp, Exposition)
    parse(text)         text -> Exposition; raises ValueError on any malformed line
    Exposition.value(name, **labels)   the sample's value (KeyError when absent)
    Exposition.families                {family name: type}
    promtool()          path of promtool, or None

Only the standard library; the parser follows the format's grammar (escapes in label
values, one TYPE per family before its samples, histogram suffixes) closely enough that a
mistake in switchboard's writer fails here as well as in promtool.
"""

import math
import os
import re
import shutil

from harness import request

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
_sample_re = re.compile(r"^(%s)(\{.*\})? (\S+)$" % NAME)
_label_re = re.compile(r'(%s)="((?:[^"\\\n]|\\[\\"n])*)"(,|\})' % LABEL)
HIST_SUFFIXES = ("_bucket", "_sum", "_count")


def _unescape(v):
    return re.sub(r"\\([\\\"n])", lambda m: "\n" if m.group(1) == "n" else m.group(1), v)


def _parse_labels(s):
    if not s:
        return ()
    assert s[0] == "{" and s[-1] == "}"
    body, pos, out = s[1:], 0, []
    if body == "}":
        return ()
    while pos < len(body):
        m = _label_re.match(body, pos)
        if not m:
            raise ValueError("bad label set %r" % s)
        out.append((m.group(1), _unescape(m.group(2))))
        pos = m.end()
        if m.group(3) == "}":
            if pos != len(body):
                raise ValueError("text after the label set %r" % s)
            break
    names = [k for k, _ in out]
    if len(set(names)) != len(names):
        raise ValueError("repeated label in %r" % s)
    return tuple(sorted(out))


def _value(v):
    if v in ("+Inf", "-Inf", "NaN"):
        return float(v.replace("Inf", "inf").replace("NaN", "nan"))
    return float(v)


class Exposition:
    def __init__(self):
        self.families = {}   # name -> type
        self.samples = {}    # (series name, labels tuple) -> float
        self.family_of = {}  # series name -> family name

    def value(self, name, **labels):
        return self.samples[(name, tuple(sorted(labels.items())))]

    def get(self, name, default=None, **labels):
        return self.samples.get((name, tuple(sorted(labels.items()))), default)

    def series(self, name):
        """[(labels dict, value)] of every sample named |name|."""
        return [(dict(l), v) for (n, l), v in self.samples.items() if n == name]

    def label_names(self):
        return {k for (_, l) in self.samples for k, _ in l}


def parse(text):
    if not text.endswith("\n"):
        raise ValueError("the exposition must end with a newline")
    e = Exposition()
    for line in text.split("\n")[:-1]:
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            parts = line.split(" ")
            if len(parts) != 4 or parts[3] not in ("counter", "gauge", "histogram", "summary",
                                                   "untyped"):
                raise ValueError("bad TYPE line %r" % line)
            if parts[2] in e.families:
                raise ValueError("second TYPE for %s" % parts[2])
            e.families[parts[2]] = parts[3]
            continue
        if line.startswith("#") or line == "":
            raise ValueError("unexpected line %r" % line)
        m = _sample_re.match(line)
        if not m:
            raise ValueError("bad sample line %r" % line)
        name, labels, value = m.group(1), _parse_labels(m.group(2)), _value(m.group(3))
        fam = name
        if name not in e.families:
            for suf in HIST_SUFFIXES:
                base = name[: -len(suf)]
                if name.endswith(suf) and e.families.get(base) == "histogram":
                    fam = base
        if fam not in e.families:
            raise ValueError("sample %s before its TYPE line" % name)
        key = (name, labels)
        if key in e.samples:
            raise ValueError("duplicate sample %r" % line)
        e.samples[key] = value
        e.family_of[name] = fam
    return e


def scrape(sb):
    r = request(sb, "GET", "/metrics")
    assert r.status == 200, r
    return r, parse(r.body.decode("utf-8"))


def histograms(e):
    """{(family, labels without le): [(le, count)...], "_count": n, "_sum": s} per histogram
    series, for consistency checks."""
    out = {}
    for fam, typ in e.families.items():
        if typ != "histogram":
            continue
        for labels, v in e.series(fam + "_bucket"):
            le = labels.pop("le")
            key = (fam, tuple(sorted(labels.items())))
            h = out.setdefault(key, {"buckets": []})
            h["buckets"].append((math.inf if le == "+Inf" else float(le), v))
        for key, h in out.items():
            if key[0] != fam:
                continue
            h["buckets"].sort()
            h["count"] = e.value(fam + "_count", **dict(key[1]))
            h["sum"] = e.value(fam + "_sum", **dict(key[1]))
    return out


# `make test-deps` puts tools taken out of Debian packages here (tools/deb-tool.sh).
TOOLS_BIN = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "build", "tools", "bin")


def tool(name):
    """|name| on PATH, else in build/tools/bin, else None."""
    return shutil.which(name) or shutil.which(name, path=TOOLS_BIN)


def promtool():
    return tool("promtool")
