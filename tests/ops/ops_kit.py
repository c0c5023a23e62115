"""What the ops kit (``ops/``) queries: the PromQL of the Grafana dashboard and the alert rules,
and the metric names in it.

The names are read with a small tokenizer, not a PromQL parser: strings, label matchers,
ranges and ``by (...)``-style label lists are cut out, then every identifier that is not a
function, an aggregation or a keyword is a metric name. The dashboard and rules are written
in plain PromQL, which this reads correctly; ``promtool`` checks that they are valid.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

OPS = Path(__file__).resolve().parents[2] / "ops"
DASHBOARD = OPS / "grafana" / "cortex-fleet.json"
RULE_FILES = sorted((OPS / "prometheus").glob("*.yml"))
RATE_INTERVAL = "5m"  # what Grafana puts in for $__rate_interval
SYNTHETIC = frozenset({"up"})
"""Series Prometheus makes itself for every scrape target; no program exposes them."""

KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2", "by", "without", "on"}
    | {"ignoring", "group_left", "group_right"}
)
MODIFIERS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        target["expr"].replace("$__rate_interval", RATE_INTERVAL)
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def rule_queries() -> list[str]:
    return [
        str(rule["expr"])
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def metric_names(expr: str) -> set[str]:
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = MODIFIERS.sub("", text)
    names = set()
    for match in IDENTIFIER.finditer(text):
        if text[match.end() :].lstrip().startswith("(") or match.group() in KEYWORDS:
            continue  # a function or aggregation, or an operator
        names.add(match.group())
    return names


def promtool() -> str:
    """The path of ``promtool``; without it the test skips, or fails when ``CI`` is set."""
    found = shutil.which("promtool")
    if found:
        return found
    message = "promtool is not installed (Debian: apt-get install prometheus)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}. CI is set, so this is a failure, not a skip.", pytrace=False)
    pytest.skip(message)
