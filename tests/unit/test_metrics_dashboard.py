"""deploy/grafana/broadcaster.json: an importable dashboard whose queries use only metrics (and labels)
defined in broadcaster/metrics.py; with promtool installed, every query is also parsed as PromQL."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from broadcaster.metrics import label_names
from tests.unit.test_metrics_alerts import _referenced

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "broadcaster.json"
PROMTOOL = shutil.which("promtool")
DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def _targets(dashboard: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(p["title"], t) for p in _panels(dashboard) for t in p["targets"]]


def test_dashboard_is_importable(dashboard: dict[str, Any]) -> None:
    """What Grafana's import needs: a datasource input, a uid, a title, a schema version, panels."""
    assert dashboard["__inputs"] == [{"name": "DS_PROMETHEUS", "label": "Prometheus",
                                      "description": "The Prometheus that scrapes broadcaster's /metrics",
                                      "type": "datasource", "pluginId": "prometheus", "pluginName": "Prometheus"}]
    assert dashboard["id"] is None
    assert dashboard["uid"] == "broadcaster-main" and dashboard["title"] == "broadcaster"
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for var in dashboard["templating"]["list"]:
        assert var["datasource"] == DS
        assert all(name in label_names() for name, _ in _referenced(var["definition"]))


def test_panels_fit_the_grid_and_query_prometheus(dashboard: dict[str, Any]) -> None:
    occupied: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
    for panel in _panels(dashboard):
        assert panel["type"] in {"timeseries", "gauge", "stat", "table"}, panel["title"]
        assert panel["datasource"] == DS, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DS and target["expr"].strip(), panel["title"]


def test_queries_use_only_defined_metrics_and_labels(dashboard: dict[str, Any]) -> None:
    defined = label_names()
    for title, target in _targets(dashboard):
        used = _referenced(target["expr"])
        assert used, f"{title}: query names no metric: {target['expr']}"
        for name, labels in used:
            assert name in defined, f"{title}: {name} is not defined in broadcaster/metrics.py"
            assert labels <= defined[name], f"{title}: {name} has no label(s) {labels - defined[name]}"
        for grouped in re.findall(r"\bby \(([^)]*)\)", target["expr"]):
            names = {g.strip() for g in grouped.split(",")}
            assert all(names <= defined[n] | {"le"} for n, _ in used), f"{title}: grouping by {names}"


@pytest.mark.parametrize("needle", ["Send rate vs limit", "Delivery latency percentiles", "Failures by code",
                                    "Webhook health", "Queue per team", "First response time per team"])
def test_the_issues_panels_are_there(dashboard: dict[str, Any], needle: str) -> None:
    assert needle in {p["title"] for p in _panels(dashboard)}


def test_send_rate_panel_shows_rate_and_both_limits(dashboard: dict[str, Any]) -> None:
    panel = next(p for p in _panels(dashboard) if p["title"] == "Send rate vs limit")
    names = [n for t in panel["targets"] for n, _ in _referenced(t["expr"])]
    assert names == ["broadcaster_send_requests_total", "broadcaster_limiter_current_messages_per_second",
                     "broadcaster_limiter_configured_messages_per_second"]


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (scripts/ensure-promtool.sh)")
def test_every_query_parses_as_promql(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """Each query becomes a recording rule, so `promtool check rules` parses it."""
    rules = [{"record": f"dashboard:query{i}", "expr": t["expr"].replace("$number", ".*")}
             for i, (_, t) in enumerate(_targets(dashboard))]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
