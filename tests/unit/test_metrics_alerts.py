"""deploy/prometheus/alerts.yml: structure (always), `promtool check rules` and promtool rule unit
tests (when promtool is installed: scripts/ensure-promtool.sh).

PyYAML is not a dependency, so the structure test reads the file with `parse_yaml_subset`, a small
reader for the block-style YAML the rule file is written in (mappings, sequences, plain and quoted
scalars, `|` / `>` block scalars, full-line comments). It refuses anything else, loudly.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from broadcaster.metrics import label_names

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed "
                                    "(run scripts/ensure-promtool.sh: Debian's `prometheus` package)")

# the six alerts
REQUIRED_ALERTS = {
    "BroadcasterSendFailureRatioHigh",          # failure ratio high
    "BroadcasterDeliveryLatencyP90High",        # delivery latency p90 high
    "BroadcasterCircuitBreakerTripped",         # circuit breaker tripped
    "BroadcasterTierBudgetNearlyUsed",          # tier budget nearly used
    "BroadcasterWebhookSignatureFailures",      # webhook signature failures
    "BroadcasterNoSendsWhileCampaignRunning",   # no sends while a campaign is running
}


# ---- a reader for the YAML subset ------------------------------------------------------------------

class YamlSubsetError(ValueError):
    """The text uses YAML this reader does not handle; the message names the line."""


def _scalar(text: str, lineno: int) -> str:
    text = text.strip()
    if text.startswith('"'):
        if not text.endswith('"') or len(text) < 2:
            raise YamlSubsetError(f"line {lineno}: unterminated double-quoted scalar")
        return json.loads(text)
    if text.startswith("'"):
        if not text.endswith("'") or len(text) < 2:
            raise YamlSubsetError(f"line {lineno}: unterminated single-quoted scalar")
        return text[1:-1].replace("''", "'")
    if text[:1] in ("{", "[", "&", "*", "!", "%", "@", "`") or " #" in text:
        raise YamlSubsetError(f"line {lineno}: flow style, anchors, tags and inline comments are not supported")
    return text


def parse_yaml_subset(text: str) -> Any:
    """Parse block-style YAML into dicts, lists and strings (scalars stay strings)."""
    raw = text.splitlines()
    lines = [(i + 1, len(line) - len(line.lstrip(" ")), line.strip()) for i, line in enumerate(raw)]
    for lineno, line in enumerate(raw, 1):
        if "\t" in line[: len(line) - len(line.lstrip())]:
            raise YamlSubsetError(f"line {lineno}: tab in indentation")
    pos = 0

    def skip() -> None:
        nonlocal pos
        while pos < len(lines) and (not lines[pos][2] or lines[pos][2].startswith("#")):
            pos += 1

    def block_scalar(parent_indent: int, style: str) -> str:
        nonlocal pos
        body: list[str] = []
        indent = None
        while pos < len(lines):
            lineno, ind, content = lines[pos]
            if content and ind <= parent_indent:
                break
            if content and indent is None:
                indent = ind
            body.append(raw[lineno - 1][indent:] if content else "")
            pos += 1
        while body and not body[-1]:
            body.pop()
        return ("\n" if style == "|" else " ").join(body) + "\n"

    def node(indent: int) -> Any:
        skip()
        if pos >= len(lines):
            raise YamlSubsetError("unexpected end of file: a value is missing")
        lineno, ind, content = lines[pos]
        if ind < indent:
            raise YamlSubsetError(f"line {lineno}: a value is missing")
        if content == "-" or content.startswith("- "):
            return sequence(ind)
        return mapping(ind)

    def value_after(key_indent: int, rest: str, lineno: int) -> Any:
        nonlocal pos
        if rest in ("|", ">", "|-", ">-"):
            return block_scalar(key_indent, rest[0])
        if rest:
            return _scalar(rest, lineno)
        skip()
        if pos < len(lines) and lines[pos][1] > key_indent:
            return node(lines[pos][1])
        raise YamlSubsetError(f"line {lineno}: empty values are not supported")

    def mapping(indent: int) -> dict[str, Any]:
        nonlocal pos
        out: dict[str, Any] = {}
        while True:
            skip()
            if pos >= len(lines) or lines[pos][1] < indent:
                return out
            lineno, ind, content = lines[pos]
            if ind > indent or content.startswith("- "):
                raise YamlSubsetError(f"line {lineno}: unexpected indentation")
            match = re.fullmatch(r"([A-Za-z_][\w.-]*):(?:\s+(.*))?", content)
            if match is None:
                raise YamlSubsetError(f"line {lineno}: expected `key: value`, got {content!r}")
            key, rest = match.group(1), (match.group(2) or "").strip()
            if key in out:
                raise YamlSubsetError(f"line {lineno}: duplicate key {key!r}")
            pos += 1
            out[key] = value_after(indent, rest, lineno)

    def sequence(indent: int) -> list[Any]:
        nonlocal pos
        out: list[Any] = []
        while True:
            skip()
            if pos >= len(lines) or lines[pos][1] < indent:
                return out
            lineno, ind, content = lines[pos]
            if ind != indent or not (content == "-" or content.startswith("- ")):
                raise YamlSubsetError(f"line {lineno}: expected a `- ` item at column {indent}")
            item = content[1:].strip()
            if not item:
                pos += 1
                out.append(node(indent + 1))
            elif re.match(r"[A-Za-z_][\w.-]*:(\s|$)", item):
                # `- key: value`: a mapping whose first key sits two columns in
                lines[pos] = (lineno, indent + 2, item)
                out.append(mapping(indent + 2))
            else:
                pos += 1
                out.append(_scalar(item, lineno))

    skip()
    result = node(0)
    skip()
    if pos < len(lines):
        raise YamlSubsetError(f"line {lines[pos][0]}: unexpected content after the document")
    return result


def test_yaml_subset_reader_on_a_sample() -> None:
    doc = parse_yaml_subset(
        "# comment\n"
        "groups:\n"
        "  - name: g\n"
        "    rules:\n"
        "      - alert: A\n"
        "        expr: |\n"
        "          sum(x)\n"
        "            > 1\n"
        "        labels:\n"
        "          severity: 'warn''s'\n"
        "        annotations:\n"
        '          summary: "a {{ $labels.x }}"\n'
        "      - record: r\n"
        "        expr: y\n")
    assert doc == {"groups": [{"name": "g", "rules": [
        {"alert": "A", "expr": "sum(x)\n  > 1\n", "labels": {"severity": "warn's"},
         "annotations": {"summary": "a {{ $labels.x }}"}},
        {"record": "r", "expr": "y"}]}]}


@pytest.mark.parametrize(("text", "message"), [
    ("a: {b: 1}\n", r"^line 1: flow style"),
    ("a: 1\na: 2\n", r"^line 2: duplicate key 'a'"),
    ("a:\n", r"^line 1: empty values are not supported"),
    ("a: 1\n  b: 2\n", r"^line 2: unexpected indentation"),
])
def test_yaml_subset_reader_refuses_what_it_does_not_handle(text: str, message: str) -> None:
    with pytest.raises(YamlSubsetError, match=message):
        parse_yaml_subset(text)


# ---- the rule file's structure (always runs) -------------------------------------------------------

def _rules() -> list[dict[str, Any]]:
    doc = parse_yaml_subset(ALERTS.read_text(encoding="utf-8"))
    assert set(doc) == {"groups"}
    rules = []
    names = set()
    for group in doc["groups"]:
        assert set(group) == {"name", "rules"}, group.keys()
        assert group["name"] not in names, f"duplicate group {group['name']}"
        names.add(group["name"])
        assert isinstance(group["rules"], list) and group["rules"]
        rules.extend(group["rules"])
    return rules


def _referenced(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names used in its {…} matcher) for every metric named in a PromQL expr."""
    found = []
    for match in re.finditer(r"\b((?:broadcaster|process)_[a-z0-9_]+)\b(\{([^}]*)\})?", expr):
        matchers = match.group(3) or ""
        found.append((match.group(1), set(re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", matchers))))
    return found


def test_alert_rules_have_the_required_shape() -> None:
    rules = _rules()
    alerts = [r["alert"] for r in rules]
    assert len(alerts) == len(set(alerts)), "duplicate alert names"
    assert REQUIRED_ALERTS <= set(alerts)
    for rule in rules:
        where = rule.get("alert", "?")
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, where
        assert re.fullmatch(r"Broadcaster[A-Z][A-Za-z0-9]+", rule["alert"]), where
        assert rule["expr"].strip(), where
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), where
        assert rule["labels"]["severity"] in {"warning", "critical"}, where
        assert {"summary", "description"} <= set(rule["annotations"]), where
        expr = rule["expr"]
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), where


def test_alert_exprs_use_only_defined_metrics_and_their_labels() -> None:
    defined = label_names()
    for rule in _rules():
        used = _referenced(rule["expr"])
        assert used, f"{rule['alert']} references no broadcaster metric"
        for name, labels in used:
            assert name in defined, f"{rule['alert']}: {name} is not defined in broadcaster/metrics.py"
            assert labels <= defined[name], f"{rule['alert']}: {name} has no label(s) {labels - defined[name]}"


# ---- promtool -------------------------------------------------------------------------------------------

@needs_promtool
def test_promtool_check_rules() -> None:
    result = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


SENDS = "broadcaster_send_requests_total"
FAILURE_DESC = ("{pct} of send requests failed over 5 minutes (permanent, transient, unknown or halted). "
                "See the failures-by-code panel.")

# promtool rule unit tests: JSON is YAML, so the test file is written with json.dumps
PROMTOOL_TESTS: list[dict[str, Any]] = [
    {   # failure ratio: number 111 fails 1 in 7; number 222 is only throttled (never a failure)
        "interval": "1m",
        "input_series": [
            _series(SENDS, "0+60x40", number="111", template="t", outcome="accepted", instance="a"),
            _series(SENDS, "0+10x40", number="111", template="t", outcome="permanent_error", instance="a"),
            _series(SENDS, "0+60x40", number="222", template="t", outcome="accepted", instance="a"),
            _series(SENDS, "0+30x40", number="222", template="t", outcome="throttled", instance="a"),
        ],
        "alert_rule_test": [
            {"eval_time": "3m", "alertname": "BroadcasterSendFailureRatioHigh", "exp_alerts": []},
            {"eval_time": "15m", "alertname": "BroadcasterSendFailureRatioHigh", "exp_alerts": [
                {"exp_labels": {"severity": "warning", "number": "111"},
                 "exp_annotations": {"summary": "More than 5% of sends from number 111 fail",
                                     "description": FAILURE_DESC.format(pct="14.29%")}}]},
            # sends are flowing: no "no sends" alert even though nothing says a campaign runs
            {"eval_time": "30m", "alertname": "BroadcasterNoSendsWhileCampaignRunning", "exp_alerts": []},
        ],
    },
    {   # a campaign with pending rows and a send counter that stopped moving at 5m
        "interval": "1m",
        "input_series": [
            _series("broadcaster_campaign_recipients", "100x60", workspace="w", campaign="c", state="pending",
                    instance="a"),
            _series("broadcaster_campaign_recipients", "100x60", workspace="w", campaign="c", state="pending",
                    instance="b"),
            _series(SENDS, "0+50x5 250x55", number="111", template="t", outcome="accepted", instance="a"),
        ],
        "alert_rule_test": [
            {"eval_time": "10m", "alertname": "BroadcasterNoSendsWhileCampaignRunning", "exp_alerts": []},
            {"eval_time": "40m", "alertname": "BroadcasterNoSendsWhileCampaignRunning", "exp_alerts": [
                {"exp_labels": {"severity": "critical"},
                 "exp_annotations": {
                     "summary": "A campaign is running with recipients pending, but nothing was sent for 10 minutes",
                     "description": "No send requests for 10 minutes while the ledger holds pending or claimed "
                                    "rows. Check that a worker is running and not stuck on the limiter."}}]},
        ],
    },
    {   # a running campaign whose worker never sent anything (no send series at all)
        "interval": "1m",
        "input_series": [
            _series("broadcaster_campaign_recipients", "5x30", workspace="w", campaign="c", state="claimed"),
            _series("broadcaster_campaign_recipients", "0x30", workspace="w", campaign="d", state="pending"),
        ],
        "alert_rule_test": [
            {"eval_time": "15m", "alertname": "BroadcasterNoSendsWhileCampaignRunning", "exp_alerts": [
                {"exp_labels": {"severity": "critical"},
                 "exp_annotations": {
                     "summary": "A campaign is running with recipients pending, but nothing was sent for 10 minutes",
                     "description": "No send requests for 10 minutes while the ledger holds pending or claimed "
                                    "rows. Check that a worker is running and not stuck on the limiter."}}]},
        ],
    },
    {   # circuit breaker: one trip at 2m, forgotten 10 minutes later
        "interval": "1m",
        "input_series": [
            _series("broadcaster_circuit_breaker_trips_total", "0 0 1x30", reason="132015", instance="a"),
        ],
        "alert_rule_test": [
            {"eval_time": "1m", "alertname": "BroadcasterCircuitBreakerTripped", "exp_alerts": []},
            {"eval_time": "4m", "alertname": "BroadcasterCircuitBreakerTripped", "exp_alerts": [
                {"exp_labels": {"severity": "critical", "reason": "132015"},
                 "exp_annotations": {
                     "summary": "A campaign was paused by the circuit breaker (reason 132015)",
                     "description": "Campaign-level errors (template, token, number or account) paused a "
                                    "campaign. Fix the cause, then resume it with `broadcaster campaign resume`."}}]},
            {"eval_time": "25m", "alertname": "BroadcasterCircuitBreakerTripped", "exp_alerts": []},
        ],
    },
    {   # tier: 111 has 5% left, 222 has half, 333 is unlimited (+Inf / +Inf never fires)
        "interval": "1m",
        "input_series": [
            _series("broadcaster_tier_budget_remaining", "50x20", number="111"),
            _series("broadcaster_tier_limit", "1000x20", number="111"),
            _series("broadcaster_tier_budget_remaining", "500x20", number="222"),
            _series("broadcaster_tier_limit", "1000x20", number="222"),
            _series("broadcaster_tier_budget_remaining", "+Inf+0x20", number="333"),
            _series("broadcaster_tier_limit", "+Inf+0x20", number="333"),
        ],
        "alert_rule_test": [
            {"eval_time": "3m", "alertname": "BroadcasterTierBudgetNearlyUsed", "exp_alerts": []},
            {"eval_time": "10m", "alertname": "BroadcasterTierBudgetNearlyUsed", "exp_alerts": [
                {"exp_labels": {"severity": "warning", "number": "111"},
                 "exp_annotations": {
                     "summary": "Number 111 has used over 90% of its daily tier",
                     "description": "Only 5% of the rolling 24 h unique-recipient tier is left; new recipients "
                                    "will wait."}}]},
        ],
    },
    {   # delivery p90 between 300 and 600 s, and read latency (not alerted on) very long
        "interval": "1m",
        "input_series": [
            _series("broadcaster_delivery_latency_seconds_bucket", "0+1x60", kind="delivered", le="60"),
            _series("broadcaster_delivery_latency_seconds_bucket", "0+2x60", kind="delivered", le="300"),
            _series("broadcaster_delivery_latency_seconds_bucket", "0+10x60", kind="delivered", le="600"),
            _series("broadcaster_delivery_latency_seconds_bucket", "0+10x60", kind="delivered", le="+Inf"),
            _series("broadcaster_delivery_latency_seconds_bucket", "0+10x60", kind="read", le="+Inf"),
        ],
        "alert_rule_test": [
            {"eval_time": "10m", "alertname": "BroadcasterDeliveryLatencyP90High", "exp_alerts": []},
            {"eval_time": "45m", "alertname": "BroadcasterDeliveryLatencyP90High", "exp_alerts": [
                {"exp_labels": {"severity": "warning"},
                 "exp_annotations": {
                     "summary": "p90 accepted to delivered latency is above 5 minutes",
                     "description": "p90 delivery latency is 9m 22s over 15 minutes."}}]},
        ],
    },
    {   # webhook signatures: 2 bad ones are noise, a steady stream alerts
        "interval": "1m",
        "input_series": [
            _series("broadcaster_webhook_requests_total", "0 1 2x30", result="bad_signature", instance="a"),
            _series("broadcaster_webhook_requests_total", "0+100x30", result="ok", instance="a"),
            _series("broadcaster_webhook_requests_total", "0x10 0+1x20", result="bad_signature", instance="b"),
        ],
        "alert_rule_test": [
            {"eval_time": "3m", "alertname": "BroadcasterWebhookSignatureFailures", "exp_alerts": []},
            {"eval_time": "20m", "alertname": "BroadcasterWebhookSignatureFailures", "exp_alerts": [
                {"exp_labels": {"severity": "warning"},
                 "exp_annotations": {
                     "summary": "Webhooks with a bad X-Hub-Signature-256 are arriving",
                     "description": "9 webhook requests failed the signature check in 10 minutes: the app "
                                    "secret may be wrong, or someone is probing the endpoint."}}]},
        ],
    },
]


@needs_promtool
def test_promtool_rule_unit_tests(tmp_path: Path) -> None:
    spec = {"rule_files": [str(ALERTS)], "evaluation_interval": "1m", "tests": PROMTOOL_TESTS}
    path = tmp_path / "alerts_test.yml"
    path.write_text(json.dumps(spec, indent=1), encoding="utf-8")
    result = subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_promtool_unit_test() -> None:
    tested = {case["alertname"] for t in PROMTOOL_TESTS for case in t["alert_rule_test"] if case["exp_alerts"]}
    assert tested == {r["alert"] for r in _rules()}


def test_referenced_reads_metric_names_and_matcher_labels() -> None:
    expr = 'sum(rate(broadcaster_send_requests_total{outcome=~"a|b", bogus!="y"}[5m])) / process_open_fds'
    assert _referenced(expr) == [("broadcaster_send_requests_total", {"outcome", "bogus"}),
                                 ("process_open_fds", set())]
