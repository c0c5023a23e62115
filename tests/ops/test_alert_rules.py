"""The alert rules pass ``promtool check rules``, and every dashboard query is valid PromQL."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from ops_kit import RULE_FILES, dashboard_queries, metric_names, promtool


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_alert_rules_pass_promtool() -> None:
    assert RULE_FILES, "no rule files under ops/prometheus"
    for path in RULE_FILES:
        done = check(path)
        assert done.returncode == 0, done.stdout + done.stderr


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 10
    rules = [{"record": f"dashboard:query_{i}", "expr": q} for i, q in enumerate(queries)]
    path = tmp_path / "dashboard.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = check(path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_broken_rule_fails_the_check(tmp_path: Path) -> None:
    path = tmp_path / "broken.yml"
    rule = {"alert": "Broken", "expr": "sum by (model) (rate(cortex_requests_total[5m])"}
    path.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [rule]}]}))
    assert check(path).returncode != 0


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, model) (rate(cortex_ttft_bucket{job="a:b"}[5m])))'
        " / on (model) group_left vllm:num_requests_waiting > bool 0 or up"
    )
    assert metric_names(expr) == {"cortex_ttft_bucket", "vllm:num_requests_waiting", "up"}
