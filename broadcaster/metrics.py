"""Prometheus metrics: every metric defined once, on one dedicated registry, served from a thread.

    engine (trio loop) ──record_*/observe_*/set_*──▶ REGISTRY ◀──scrape── /metrics (own thread)

Guarantees:
- every metric lives on `REGISTRY` (not prometheus_client's global one) and is defined here only;
  names follow Prometheus conventions: `broadcaster_` prefix, snake_case, base units (`_seconds`),
  `_total` on counters;
- labels are low-cardinality only: sender number id (`number`, a Graph object id, not a phone
  number), workspace, template, campaign, error code, outcome, status, result, team, reason,
  ledger state. Never a recipient's phone number, a contact id or a message id;
- the hot-path calls (`record_send`, `observe_*`) bind their label children once and cache them in
  a dict: after the first call per label set, a call is a dict lookup plus the metric update
  (≈ 1–3 µs; see benchmarks/bench_metrics.py);
- `/metrics` is served by `start_metrics_server` from its own thread, so a scrape never stalls the
  trio loop (generating on the loop stalled it 115 ms per scrape, architecture.md "Metrics").

What this is not: metrics are not the source of any report number. Counts shown to users come from
the ledger; the campaign gauges here are refreshed *from* the ledger (`refresh_campaign_gauges`).
Counters are per process: with several workers, sum them in PromQL, and take `max` over the
ledger gauges (every process that refreshes them reads the same ledger).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Protocol
from wsgiref.simple_server import WSGIServer

import trio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger("broadcaster.metrics")

__all__ = [
    "CAMPAIGN_STATES",
    "CLAIM_SECONDS",
    "LANES_IN_FLIGHT",
    "REGISTRY",
    "SEND_OUTCOMES",
    "STATUS_EVENTS",
    "WEBHOOK_RESULTS",
    "WRITE_SECONDS",
    "exposed_names",
    "label_is_safe",
    "label_names",
    "observe_claim",
    "observe_delivery_latency",
    "observe_first_response",
    "observe_resolution",
    "observe_write",
    "record_auto_answer",
    "record_campaign_state",
    "record_circuit_breaker_trip",
    "record_escalation",
    "record_inbound_message",
    "record_limiter_wait",
    "record_send",
    "record_status_event",
    "record_webhook",
    "refresh_campaign_gauges",
    "run_campaign_gauges",
    "set_limiter_rate",
    "set_queue_length",
    "set_queue_lengths",
    "set_tier_budget",
    "start_metrics_server",
    "stop_metrics_server",
    "unsafe_labels",
]

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)  # process_cpu_seconds_total, process_resident_memory_bytes, …

# ---- vocabularies (fixed label values) ------------------------------------------------------

SEND_OUTCOMES = ("accepted", "throttled", "transient_error", "permanent_error", "unknown", "halted")
STATUS_EVENTS = ("sent", "delivered", "read", "failed", "other")
DELIVERY_KINDS = ("delivered", "read")
WEBHOOK_RESULTS = ("ok", "bad_signature", "too_large", "bad_request", "dead_letter", "verified",
                   "verify_failed")
CAMPAIGN_STATES = ("draft", "scheduled", "running", "paused", "completed", "cancelled")
LEDGER_STATES = ("pending", "claimed", "unknown", "accepted", "sent", "delivered", "read", "failed",
                 "skipped")
SENDER_ID_LABELS = frozenset({"number"})  # label values that are Graph object ids, digits by design
REDACTED = "redacted"

# ---- buckets (seconds) ------------------------------------------------------------------------

_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
_DELIVERY_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600,
                     12 * 3600, 24 * 3600)
_WEBHOOK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_INBOX_BUCKETS = (30, 60, 120, 300, 600, 900, 1800, 3600, 2 * 3600, 4 * 3600, 8 * 3600,
                  24 * 3600, 48 * 3600, 7 * 24 * 3600)

# ---- sends ------------------------------------------------------------------------------------

SEND_REQUESTS = Counter(
    "broadcaster_send_requests", "Send requests (POST /messages) by sender number, template and outcome.",
    ("number", "template", "outcome"), registry=REGISTRY)
SEND_ERRORS = Counter(
    "broadcaster_send_errors", "Send requests answered with a WhatsApp error, by Graph error code.",
    ("number", "code", "outcome"), registry=REGISTRY)
SEND_SECONDS = Histogram(
    "broadcaster_send_request_duration_seconds", "Send request latency (request out → answer in).",
    ("number",), buckets=_REQUEST_BUCKETS, registry=REGISTRY)
LANES_IN_FLIGHT = Gauge(
    "broadcaster_lanes_in_flight", "Sender lanes with a request in flight.", registry=REGISTRY)
CLAIM_SECONDS = Histogram(
    "broadcaster_claim_batch_duration_seconds", "Latency of one claim_batch round trip.",
    buckets=_BATCH_BUCKETS, registry=REGISTRY)
WRITE_SECONDS = Histogram(
    "broadcaster_write_batch_duration_seconds", "Latency of writing one batch of outcomes.",
    buckets=_BATCH_BUCKETS, registry=REGISTRY)

# ---- delivery and webhooks ----------------------------------------------------------------------

STATUS_EVENTS_TOTAL = Counter(
    "broadcaster_status_events", "Status webhook events by status.", ("status",), registry=REGISTRY)
STATUS_FAILURES = Counter(
    "broadcaster_status_failures", "Failed status webhook events by Graph error code.", ("code",),
    registry=REGISTRY)
DELIVERY_SECONDS = Histogram(
    "broadcaster_delivery_latency_seconds",
    "Accepted → delivered / accepted → read latency, from webhook timestamps.", ("kind",),
    buckets=_DELIVERY_BUCKETS, registry=REGISTRY)
WEBHOOK_REQUESTS = Counter(
    "broadcaster_webhook_requests", "Webhook requests (and stored events) by result.", ("result",),
    registry=REGISTRY)
WEBHOOK_SECONDS = Histogram(
    "broadcaster_webhook_answer_duration_seconds", "Webhook request received → answer sent.",
    buckets=_WEBHOOK_BUCKETS, registry=REGISTRY)

# ---- limiter ------------------------------------------------------------------------------------

LIMITER_CONFIGURED = Gauge(
    "broadcaster_limiter_configured_messages_per_second", "Configured messages/s ceiling per number.",
    ("number",), registry=REGISTRY)
LIMITER_CURRENT = Gauge(
    "broadcaster_limiter_current_messages_per_second", "Current adaptive (AIMD) messages/s per number.",
    ("number",), registry=REGISTRY)
LIMITER_WAIT = Counter(
    "broadcaster_limiter_wait_seconds", "Seconds sender lanes waited for tokens, per number.",
    ("number",), registry=REGISTRY)
TIER_LIMIT = Gauge(
    "broadcaster_tier_limit", "Daily unique-recipient tier per number (+Inf when unlimited).",
    ("number",), registry=REGISTRY)
TIER_REMAINING = Gauge(
    "broadcaster_tier_budget_remaining",
    "Unique recipients still allowed in the rolling 24 h per number (+Inf when unlimited).",
    ("number",), registry=REGISTRY)

# ---- campaigns ----------------------------------------------------------------------------------

CAMPAIGN_RECIPIENTS = Gauge(
    "broadcaster_campaign_recipients", "Recipients per ledger state of each running campaign (from the ledger).",
    ("workspace", "campaign", "state"), registry=REGISTRY)
CAMPAIGNS_RUNNING = Gauge(
    "broadcaster_campaigns_running", "Campaigns in state running (from the ledger).", registry=REGISTRY)
CAMPAIGN_STATE_CHANGES = Counter(
    "broadcaster_campaign_state_changes", "Campaign state changes by the state entered.", ("state",),
    registry=REGISTRY)
BREAKER_TRIPS = Counter(
    "broadcaster_circuit_breaker_trips", "Circuit-breaker trips (campaign paused) by reason.", ("reason",),
    registry=REGISTRY)

# ---- inbox --------------------------------------------------------------------------------------

INBOUND_MESSAGES = Counter(
    "broadcaster_inbound_messages", "Inbound messages received, by workspace.", ("workspace",),
    registry=REGISTRY)
AUTO_ANSWERS = Counter(
    "broadcaster_auto_answers", "Inbound messages answered by an FAQ rule, by team.", ("team",),
    registry=REGISTRY)
ESCALATIONS = Counter(
    "broadcaster_escalations", "Conversations escalated to Slack, by team.", ("team",), registry=REGISTRY)
QUEUE_LENGTH = Gauge(
    "broadcaster_inbox_queue_length", "Open conversations waiting for an agent, by team.", ("team",),
    registry=REGISTRY)
FIRST_RESPONSE_SECONDS = Histogram(
    "broadcaster_first_response_seconds", "First response time (inbound → first agent answer), by team.",
    ("team",), buckets=_INBOX_BUCKETS, registry=REGISTRY)
RESOLUTION_SECONDS = Histogram(
    "broadcaster_resolution_seconds", "Conversation opened → resolved, by team.", ("team",),
    buckets=_INBOX_BUCKETS, registry=REGISTRY)


_METRICS = (
    SEND_REQUESTS, SEND_ERRORS, SEND_SECONDS, LANES_IN_FLIGHT, CLAIM_SECONDS, WRITE_SECONDS,
    STATUS_EVENTS_TOTAL, STATUS_FAILURES, DELIVERY_SECONDS, WEBHOOK_REQUESTS, WEBHOOK_SECONDS,
    LIMITER_CONFIGURED, LIMITER_CURRENT, LIMITER_WAIT, TIER_LIMIT, TIER_REMAINING,
    CAMPAIGN_RECIPIENTS, CAMPAIGNS_RUNNING, CAMPAIGN_STATE_CHANGES, BREAKER_TRIPS,
    INBOUND_MESSAGES, AUTO_ANSWERS, ESCALATIONS, QUEUE_LENGTH, FIRST_RESPONSE_SECONDS, RESOLUTION_SECONDS,
)


# ---- label safety -------------------------------------------------------------------------------

_PHONE_LIKE = re.compile(r"\d{8,}")
_PHONE_SEPARATORS = str.maketrans("", "", " +-().")


def label_is_safe(value: str) -> bool:
    """False when `value` looks like a phone number: 8+ digits once spaces, `+ - ( ) .` are removed.

    Applies to every label but `number` (see `SENDER_ID_LABELS`): a sender's phone_number_id is a
    Graph object id of 15+ digits by design, never a recipient.
    """
    return _PHONE_LIKE.search(value.translate(_PHONE_SEPARATORS)) is None


def _safe(value: object) -> str:
    text = str(value)
    if label_is_safe(text):
        return text
    log.error("metrics: label value dropped, it looks like a phone number (%s)", REDACTED)
    return REDACTED


def unsafe_labels(exposition: str) -> list[tuple[str, str, str]]:
    """(sample, label, value) of every label value in a /metrics text that looks like a phone number.

    The `number` label (a Graph object id) and the bucket bound `le` are not checked.
    """
    found = []
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            for label, value in sample.labels.items():
                if label in SENDER_ID_LABELS or label in ("le", "quantile"):
                    continue
                if not label_is_safe(value):
                    found.append((sample.name, label, value))
    return found


def label_names() -> dict[str, frozenset[str]]:
    """Every sample name this registry can expose (`x_total`, `x_bucket`, …) → its label names.

    Covers labelled metrics that have no series yet. Histogram buckets carry `le` as well. The
    process collector's `process_*` samples have no labels.
    """
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
                "gauge": ("",)}
    names: dict[str, frozenset[str]] = {}
    for metric in _METRICS:
        labels = frozenset(metric._labelnames)  # the declared label names (public in repr, private attr)
        for suffix in suffixes[metric._type]:
            names[metric._name + suffix] = labels | {"le"} if suffix == "_bucket" else labels
    for family in REGISTRY.collect():
        if family.name.startswith("process_"):
            for sample in family.samples:
                names.setdefault(sample.name, frozenset())
    return names


def exposed_names() -> frozenset[str]:
    """Every sample name this registry can expose, labelled or not; dashboards and alert rules may
    only reference these (the tests check it)."""
    return frozenset(label_names())


# ---- sends (hot path) ---------------------------------------------------------------------------

_send_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
_error_children: dict[tuple[str, int, str], Any] = {}


def _send_child(outcome: str, number: str, template: str) -> tuple[Any, Any]:
    if outcome not in SEND_OUTCOMES:
        raise ValueError(f"metrics.record_send: outcome {outcome!r} is not one of {SEND_OUTCOMES}")
    children = (SEND_REQUESTS.labels(number, _safe(template), outcome), SEND_SECONDS.labels(number))
    _send_children[(outcome, number, template)] = children
    return children


def record_send(outcome: str, code: int | None, seconds: float, number: str, template: str) -> None:
    """Count one send request and observe its latency.

    Args:
        outcome: one of SEND_OUTCOMES: accepted, throttled (130429/131056/429, never a failure),
            transient_error (retried; a row failed after its last attempt counts here too),
            permanent_error (row failed), unknown (timeout/connection lost after the request left),
            halted (campaign-level error that trips the circuit breaker).
        code: the Graph error code when the answer carried one (also counted by code), else None.
        seconds: request out → answer in (or → giving up).
        number: the sender's phone_number_id; template: the template name.

    Raises:
        ValueError: an outcome outside SEND_OUTCOMES (a wiring bug, raised on first use).
    """
    children = _send_children.get((outcome, number, template))
    if children is None:
        children = _send_child(outcome, number, template)
    children[0].inc()
    children[1].observe(seconds)
    if code is not None:
        err = _error_children.get((number, code, outcome))
        if err is None:
            err = _error_children[(number, code, outcome)] = SEND_ERRORS.labels(number, str(code), outcome)
        err.inc()


def observe_claim(seconds: float) -> None:
    """One claim_batch round trip took `seconds`."""
    CLAIM_SECONDS.observe(seconds)


def observe_write(seconds: float) -> None:
    """Writing one batch of outcomes (record_results + release_claims) took `seconds`."""
    WRITE_SECONDS.observe(seconds)


# ---- delivery and webhooks ----------------------------------------------------------------------

_status_children = {s: STATUS_EVENTS_TOTAL.labels(s) for s in STATUS_EVENTS}
_delivery_children = {k: DELIVERY_SECONDS.labels(k) for k in DELIVERY_KINDS}
_webhook_children = {r: WEBHOOK_REQUESTS.labels(r) for r in WEBHOOK_RESULTS}


def record_status_event(status: str, code: int | None = None) -> None:
    """Count one status webhook event. Unknown statuses count as `other` (webhooks are external input).

    A `failed` event with its Graph error code is also counted by code.
    """
    child = _status_children.get(status)
    if child is None:
        child = _status_children["other"]
    child.inc()
    if status == "failed" and code is not None:
        STATUS_FAILURES.labels(str(int(code))).inc()


def observe_delivery_latency(kind: str, seconds: float) -> None:
    """Observe accepted → `kind` ('delivered' or 'read') latency. Clock skew below 0 counts as 0.

    Raises:
        ValueError: `kind` is not 'delivered' or 'read'.
    """
    child = _delivery_children.get(kind)
    if child is None:
        raise ValueError(f"metrics.observe_delivery_latency: kind {kind!r} is not one of {DELIVERY_KINDS}")
    child.observe(seconds if seconds > 0 else 0.0)


def record_webhook(result: str, seconds: float | None = None) -> None:
    """Count one webhook request (or one stored event sent to the dead letters) by result.

    Args:
        result: one of WEBHOOK_RESULTS: ok, bad_signature, too_large, bad_request, dead_letter,
            verified / verify_failed (the GET handshake).
        seconds: request received → answer sent, when there was an answer.

    Raises:
        ValueError: a result outside WEBHOOK_RESULTS.
    """
    child = _webhook_children.get(result)
    if child is None:
        raise ValueError(f"metrics.record_webhook: result {result!r} is not one of {WEBHOOK_RESULTS}")
    child.inc()
    if seconds is not None:
        WEBHOOK_SECONDS.observe(seconds)


# ---- limiter ------------------------------------------------------------------------------------

_INF = float("inf")


_limiter_children: dict[str, tuple[Any, Any, Any]] = {}


def _limiter_child(number: str) -> tuple[Any, Any, Any]:
    children = _limiter_children.get(number)
    if children is None:
        children = _limiter_children[number] = (
            LIMITER_CONFIGURED.labels(number), LIMITER_CURRENT.labels(number), LIMITER_WAIT.labels(number))
    return children


def set_limiter_rate(number: str, configured: float, current: float) -> None:
    """The number's configured ceiling and current adaptive rate, in messages/s."""
    children = _limiter_child(number)
    children[0].set(configured)
    children[1].set(current)


def record_limiter_wait(number: str, seconds: float) -> None:
    """A lane waited `seconds` for the number's tokens (0 is ignored). Hot path: children cached."""
    if seconds > 0:
        _limiter_child(number)[2].inc(seconds)


def set_tier_budget(number: str, limit: int | None, remaining: int | None) -> None:
    """The number's daily tier and what is left of it; None (unlimited) exposes +Inf for both."""
    TIER_LIMIT.labels(number).set(_INF if limit is None else limit)
    TIER_REMAINING.labels(number).set(_INF if remaining is None else max(0, remaining))


# ---- campaigns ----------------------------------------------------------------------------------

class _Fetcher(Protocol):
    async def fetch(self, sql: str, *args: Any, timeout: float | None = None) -> list[Any]: ...


RUNNING_CAMPAIGN_COUNTS_SQL = """
SELECT c.workspace, c.name AS campaign, l.state, count(l.id) AS n
FROM campaigns c LEFT JOIN ledger l ON l.campaign_id = c.id
WHERE c.state = 'running'
GROUP BY c.workspace, c.name, l.state
"""  # one round trip for every running campaign (few at a time); uses ledger_campaign_state_idx

_campaign_series: set[tuple[str, str, str]] = set()
_campaign_lock = threading.Lock()


def apply_campaign_counts(rows: Iterable[Mapping[str, Any]]) -> int:
    """Set the recipients gauge from (workspace, campaign, state, n) rows; returns campaigns seen.

    Every ledger state of a running campaign gets a series (0 when absent); series of campaigns
    that stopped running are removed, so the gauge only ever shows running campaigns.
    """
    counts: dict[tuple[str, str, str], int] = {}
    campaigns: set[tuple[str, str]] = set()
    for r in rows:
        ws, name = _safe(r["workspace"]), _safe(r["campaign"])
        campaigns.add((ws, name))
        if r["state"] is not None:
            counts[(ws, name, str(r["state"]))] = int(r["n"])
    for ws, name in campaigns:
        for state in LEDGER_STATES:
            counts.setdefault((ws, name, state), 0)
    with _campaign_lock:
        for key in _campaign_series - counts.keys():
            try:
                CAMPAIGN_RECIPIENTS.remove(*key)
            except KeyError:
                pass
        for key, n in counts.items():
            CAMPAIGN_RECIPIENTS.labels(*key).set(n)
        _campaign_series.clear()
        _campaign_series.update(counts)
    CAMPAIGNS_RUNNING.set(len(campaigns))
    return len(campaigns)


async def refresh_campaign_gauges(db: _Fetcher) -> int:
    """Refresh the per-campaign recipients gauges from the ledger (one GROUP BY); returns campaigns."""
    rows = await db.fetch(RUNNING_CAMPAIGN_COUNTS_SQL)
    return apply_campaign_counts(rows)


async def run_campaign_gauges(db: _Fetcher, *, interval_s: float = 15.0,
                              task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Refresh the campaign gauges now, then every `interval_s`. Never returns unless cancelled.

    A failed refresh is logged and retried at the next interval (metrics never stop the engine).
    """
    task_status.started()
    while True:
        try:
            await refresh_campaign_gauges(db)
        except Exception as exc:  # noqa: BLE001 - a metrics refresh must never take a worker down
            log.warning("refresh_campaign_gauges failed: %s", exc)
        await trio.sleep(interval_s)


def record_campaign_state(state: str) -> None:
    """Count one campaign entering `state` (draft, scheduled, running, paused, completed, cancelled).

    Raises:
        ValueError: a state outside CAMPAIGN_STATES.
    """
    if state not in CAMPAIGN_STATES:
        raise ValueError(f"metrics.record_campaign_state: state {state!r} is not one of {CAMPAIGN_STATES}")
    CAMPAIGN_STATE_CHANGES.labels(state).inc()


def record_circuit_breaker_trip(reason: str | int | None) -> None:
    """Count one circuit-breaker trip; `reason` is the Graph error code or a short word."""
    BREAKER_TRIPS.labels(_safe("unknown" if reason is None else reason)).inc()


# ---- inbox --------------------------------------------------------------------------------------

_queue_teams: set[str] = set()


def record_inbound_message(workspace: str) -> None:
    INBOUND_MESSAGES.labels(_safe(workspace)).inc()


def record_auto_answer(team: str) -> None:
    AUTO_ANSWERS.labels(_safe(team)).inc()


def record_escalation(team: str) -> None:
    ESCALATIONS.labels(_safe(team)).inc()


def set_queue_length(team: str, n: int) -> None:
    """Open conversations waiting for an agent in `team`."""
    team = _safe(team)
    _queue_teams.add(team)
    QUEUE_LENGTH.labels(team).set(n)


def set_queue_lengths(lengths: Mapping[str, int]) -> None:
    """Set every team's queue at once; teams seen before but absent now are set to 0."""
    given = {_safe(t): n for t, n in lengths.items()}
    for team in _queue_teams - given.keys():
        QUEUE_LENGTH.labels(team).set(0)
    for team, n in given.items():
        set_queue_length(team, n)


def observe_first_response(team: str, seconds: float) -> None:
    """First response time of one conversation (inbound → first answer by an agent)."""
    FIRST_RESPONSE_SECONDS.labels(_safe(team)).observe(max(0.0, seconds))


def observe_resolution(team: str, seconds: float) -> None:
    """Time from a conversation's opening to its resolution."""
    RESOLUTION_SECONDS.labels(_safe(team)).observe(max(0.0, seconds))


# ---- the /metrics server ------------------------------------------------------------------------

def start_metrics_server(port: int, host: str = "127.0.0.1") -> tuple[WSGIServer, threading.Thread]:
    """Serve REGISTRY on http://host:port/metrics from a daemon thread; port 0 picks a free port.

    The actual port is `server.server_port`. Scrapes run on that thread (and its per-request
    threads), never on the trio loop. Stop with `stop_metrics_server`.

    Raises:
        OSError: the port cannot be bound (the message names host and port).
    """
    try:
        server, thread = start_http_server(port, addr=host, registry=REGISTRY)
    except OSError as exc:
        raise OSError(exc.errno, f"metrics server cannot listen on {host}:{port}: {exc.strerror}") from exc
    log.info("metrics_server listening on http://%s:%s/metrics", host, server.server_port)
    return server, thread


def stop_metrics_server(server: WSGIServer, thread: threading.Thread, timeout_s: float = 5.0) -> None:
    """Stop serving, close the socket and join the thread (idempotent)."""
    server.shutdown()
    server.server_close()
    thread.join(timeout_s)
