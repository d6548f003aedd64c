"""broadcaster.metrics: what each recording call exposes, label safety, the threaded /metrics server.

Metrics are process-wide and cumulative, so each test uses label values of its own (`_name()`)
or reads deltas.
"""

from __future__ import annotations

import math
import random
import string
import threading

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.metrics import MetricWrapperBase

from broadcaster import metrics
from broadcaster.metrics import REGISTRY

NUMBER = "106540352242922"  # a sender phone_number_id: a Graph object id, exempt from the phone check


def _name(prefix: str) -> str:
    """A unique label value without digits (so it never looks like a phone number)."""
    return prefix + "_" + "".join(random.choices(string.ascii_lowercase, k=10))


def value(name: str, **labels: str) -> float:
    got = REGISTRY.get_sample_value(name, labels)
    return 0.0 if got is None else got


# ---- sends ------------------------------------------------------------------------------------------

def test_record_send_counts_outcome_latency_and_code() -> None:
    tpl = _name("tpl")
    before_latency = value("broadcaster_send_request_duration_seconds_count", number=NUMBER)
    metrics.record_send("accepted", None, 0.02, NUMBER, tpl)
    metrics.record_send("accepted", None, 0.03, NUMBER, tpl)
    metrics.record_send("permanent_error", 131026, 0.04, NUMBER, tpl)
    metrics.record_send("throttled", 130429, 0.01, NUMBER, tpl)

    assert value("broadcaster_send_requests_total", number=NUMBER, template=tpl, outcome="accepted") == 2
    assert value("broadcaster_send_requests_total", number=NUMBER, template=tpl,
                 outcome="permanent_error") == 1
    assert value("broadcaster_send_request_duration_seconds_count", number=NUMBER) - before_latency == 4
    # by code, split by outcome: a throttle is never counted as a failure
    assert value("broadcaster_send_errors_total", number=NUMBER, code="131026", outcome="permanent_error") >= 1
    assert value("broadcaster_send_errors_total", number=NUMBER, code="130429", outcome="throttled") >= 1
    assert value("broadcaster_send_errors_total", number=NUMBER, code="130429", outcome="permanent_error") == 0


def test_record_send_binds_children_once() -> None:
    tpl = _name("tpl")
    metrics.record_send("accepted", None, 0.01, NUMBER, tpl)
    child = metrics._send_children[("accepted", NUMBER, tpl)]
    metrics.record_send("accepted", None, 0.01, NUMBER, tpl)
    assert metrics._send_children[("accepted", NUMBER, tpl)] is child


def test_record_send_rejects_unknown_outcome() -> None:
    with pytest.raises(ValueError, match=r"^metrics\.record_send: outcome 'ok' is not one of \("):
        metrics.record_send("ok", None, 0.01, NUMBER, "t")


def test_template_that_looks_like_a_phone_is_redacted() -> None:
    metrics.record_send("accepted", None, 0.01, NUMBER, "919876543210")
    assert value("broadcaster_send_requests_total", number=NUMBER, template="919876543210",
                 outcome="accepted") == 0
    assert value("broadcaster_send_requests_total", number=NUMBER, template="redacted", outcome="accepted") >= 1


def test_lanes_in_flight_tracks_a_request_even_when_it_raises() -> None:
    base = value("broadcaster_lanes_in_flight")
    with metrics.LANES_IN_FLIGHT.track_inprogress():
        assert value("broadcaster_lanes_in_flight") == base + 1
    with pytest.raises(RuntimeError), metrics.LANES_IN_FLIGHT.track_inprogress():
        raise RuntimeError("boom")
    assert value("broadcaster_lanes_in_flight") == base


def test_claim_and_write_latency() -> None:
    claims = value("broadcaster_claim_batch_duration_seconds_count")
    writes = value("broadcaster_write_batch_duration_seconds_count")
    metrics.observe_claim(0.003)
    metrics.observe_write(0.004)
    metrics.observe_write(0.2)
    assert value("broadcaster_claim_batch_duration_seconds_count") == claims + 1
    assert value("broadcaster_write_batch_duration_seconds_count") == writes + 2


# ---- delivery and webhooks --------------------------------------------------------------------------

def test_status_events_unknown_status_counts_as_other_and_failures_by_code() -> None:
    other = value("broadcaster_status_events_total", status="other")
    failed = value("broadcaster_status_events_total", status="failed")
    by_code = value("broadcaster_status_failures_total", code="131047")
    metrics.record_status_event("deleted")
    metrics.record_status_event("failed", 131047)
    metrics.record_status_event("delivered")
    assert value("broadcaster_status_events_total", status="other") == other + 1
    assert value("broadcaster_status_events_total", status="failed") == failed + 1
    assert value("broadcaster_status_failures_total", code="131047") == by_code + 1


def test_delivery_latency_buckets_and_negative_skew() -> None:
    le_half = value("broadcaster_delivery_latency_seconds_bucket", kind="read", le="0.5")
    metrics.observe_delivery_latency("read", -2.0)  # webhook timestamps are whole seconds
    metrics.observe_delivery_latency("read", 7200.0)
    assert value("broadcaster_delivery_latency_seconds_bucket", kind="read", le="0.5") == le_half + 1
    with pytest.raises(ValueError, match=r"^metrics\.observe_delivery_latency: kind 'sent' is not one of"):
        metrics.observe_delivery_latency("sent", 1.0)


def test_webhook_results_and_answer_latency() -> None:
    bad = value("broadcaster_webhook_requests_total", result="bad_signature")
    dead = value("broadcaster_webhook_requests_total", result="dead_letter")
    answered = value("broadcaster_webhook_answer_duration_seconds_count")
    metrics.record_webhook("bad_signature", 0.0004)
    metrics.record_webhook("dead_letter")  # a stored event, no answer latency
    assert value("broadcaster_webhook_requests_total", result="bad_signature") == bad + 1
    assert value("broadcaster_webhook_requests_total", result="dead_letter") == dead + 1
    assert value("broadcaster_webhook_answer_duration_seconds_count") == answered + 1
    with pytest.raises(ValueError, match=r"^metrics\.record_webhook: result 'weird' is not one of"):
        metrics.record_webhook("weird")


# ---- limiter ------------------------------------------------------------------------------------------

def test_limiter_rates_wait_and_tier() -> None:
    number = "100000000000001"
    metrics.set_limiter_rate(number, 80, 40)
    metrics.record_limiter_wait(number, 0.25)
    metrics.record_limiter_wait(number, 0.0)
    metrics.set_tier_budget(number, 1000, 40)
    assert value("broadcaster_limiter_configured_messages_per_second", number=number) == 80
    assert value("broadcaster_limiter_current_messages_per_second", number=number) == 40
    assert value("broadcaster_limiter_wait_seconds_total", number=number) == pytest.approx(0.25)
    assert value("broadcaster_tier_budget_remaining", number=number) == 40
    metrics.set_tier_budget(number, None, None)  # unlimited
    assert math.isinf(value("broadcaster_tier_limit", number=number))
    assert math.isinf(value("broadcaster_tier_budget_remaining", number=number))
    metrics.set_tier_budget(number, 250, -3)
    assert value("broadcaster_tier_budget_remaining", number=number) == 0


# ---- campaigns ----------------------------------------------------------------------------------------

def test_campaign_counts_fill_every_state_and_drop_stopped_campaigns() -> None:
    ws, one, two = _name("ws"), _name("camp"), _name("camp")
    rows = [{"workspace": ws, "campaign": one, "state": "accepted", "n": 7},
            {"workspace": ws, "campaign": one, "state": "pending", "n": 3},
            {"workspace": ws, "campaign": two, "state": None, "n": 0}]  # LEFT JOIN: no rows yet
    assert metrics.apply_campaign_counts(rows) == 2
    assert value("broadcaster_campaign_recipients", workspace=ws, campaign=one, state="accepted") == 7
    assert value("broadcaster_campaign_recipients", workspace=ws, campaign=one, state="pending") == 3
    assert REGISTRY.get_sample_value("broadcaster_campaign_recipients",
                                     {"workspace": ws, "campaign": two, "state": "failed"}) == 0
    assert value("broadcaster_campaigns_running") == 2

    metrics.apply_campaign_counts([{"workspace": ws, "campaign": two, "state": "accepted", "n": 1}])
    assert REGISTRY.get_sample_value("broadcaster_campaign_recipients",
                                     {"workspace": ws, "campaign": one, "state": "accepted"}) is None
    assert value("broadcaster_campaigns_running") == 1
    metrics.apply_campaign_counts([])
    assert value("broadcaster_campaigns_running") == 0


async def test_refresh_campaign_gauges_runs_one_query() -> None:
    calls: list[str] = []

    class FakeDb:
        async def fetch(self, sql: str, *args: object, timeout: float | None = None) -> list[dict]:
            calls.append(sql)
            return [{"workspace": "ws_fake", "campaign": "camp_fake", "state": "read", "n": 5}]

    assert await metrics.refresh_campaign_gauges(FakeDb()) == 1
    assert calls == [metrics.RUNNING_CAMPAIGN_COUNTS_SQL]
    assert value("broadcaster_campaign_recipients", workspace="ws_fake", campaign="camp_fake", state="read") == 5
    metrics.apply_campaign_counts([])


async def test_run_campaign_gauges_survives_a_failed_refresh(autojump_clock: trio.abc.Clock) -> None:
    attempts = 0

    class FlakyDb:
        async def fetch(self, sql: str, *args: object, timeout: float | None = None) -> list[dict]:
            nonlocal attempts
            attempts += 1
            if attempts == 1:
                raise OSError("connection refused")
            return []

    with trio.move_on_after(35):
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: metrics.run_campaign_gauges(
                FlakyDb(), interval_s=15, task_status=task_status))
    assert attempts == 3  # t = 0 (fails), 15, 30


def test_campaign_state_changes_and_breaker_trips() -> None:
    paused = value("broadcaster_campaign_state_changes_total", state="paused")
    trips = value("broadcaster_circuit_breaker_trips_total", reason="132015")
    metrics.record_campaign_state("paused")
    metrics.record_circuit_breaker_trip(132015)
    assert value("broadcaster_campaign_state_changes_total", state="paused") == paused + 1
    assert value("broadcaster_circuit_breaker_trips_total", reason="132015") == trips + 1
    with pytest.raises(ValueError, match=r"^metrics\.record_campaign_state: state 'stopped' is not one of"):
        metrics.record_campaign_state("stopped")


# ---- inbox ----------------------------------------------------------------------------------------------

def test_inbox_counters_queue_and_histograms() -> None:
    team, other, ws = _name("team"), _name("team"), _name("ws")
    metrics.record_inbound_message(ws)
    metrics.record_auto_answer(team)
    metrics.record_escalation(team)
    metrics.set_queue_lengths({team: 4, other: 2})
    metrics.set_queue_lengths({team: 1})  # `other` drained: shown as 0, not stale
    metrics.observe_first_response(team, 90)
    metrics.observe_resolution(team, 4000)
    assert value("broadcaster_inbound_messages_total", workspace=ws) == 1
    assert value("broadcaster_auto_answers_total", team=team) == 1
    assert value("broadcaster_escalations_total", team=team) == 1
    assert value("broadcaster_inbox_queue_length", team=team) == 1
    assert REGISTRY.get_sample_value("broadcaster_inbox_queue_length", {"team": other}) == 0
    assert value("broadcaster_first_response_seconds_bucket", team=team, le="120.0") == 1
    assert value("broadcaster_first_response_seconds_bucket", team=team, le="60.0") == 0
    assert value("broadcaster_resolution_seconds_count", team=team) == 1


# ---- names and label safety -------------------------------------------------------------------------------

def test_every_metric_is_listed_once_and_named_by_convention() -> None:
    defined = [v for v in vars(metrics).values() if isinstance(v, MetricWrapperBase)]
    assert sorted(m._name for m in defined) == sorted(m._name for m in metrics._METRICS)
    for metric in defined:
        assert metric._name.startswith("broadcaster_"), metric._name
        assert metric._name == metric._name.lower() and " " not in metric._name
        if metric._type == "counter":
            assert not metric._name.endswith("_total")  # prometheus_client appends it
        if metric._type == "histogram":
            assert metric._name.endswith("_seconds"), metric._name
        assert set(metric._labelnames) <= {"number", "workspace", "template", "campaign", "code", "outcome",
                                           "status", "result", "team", "reason", "state", "kind"}


@given(st.text(alphabet="0123456789", min_size=8, max_size=15),
       st.text(alphabet=string.ascii_letters + "_", max_size=8),
       st.text(alphabet=string.ascii_letters + "_", max_size=8))
def test_label_is_safe_rejects_any_run_of_8_digits(digits: str, before: str, after: str) -> None:
    assert not metrics.label_is_safe(before + digits + after)


@pytest.mark.parametrize("value", ["+91 98765 43210", "(987) 654-3210", "98765.43210", "919876543210"])
def test_label_is_safe_rejects_formatted_phone_numbers(value: str) -> None:
    assert not metrics.label_is_safe(value)


@pytest.mark.parametrize("value", ["daily_campaign_invite", "131026", "permanent_error", "camp_2026_07",
                                   "en_US", "circuit_breaker:132015", ""])
def test_label_is_safe_accepts_codes_and_names(value: str) -> None:
    assert metrics.label_is_safe(value)


def test_unsafe_labels_finds_phones_but_not_the_sender_number_id() -> None:
    text = ('broadcaster_send_requests_total{number="106540352242922",template="919876543210",'
            'outcome="accepted"} 1.0\n'
            'broadcaster_escalations_total{team="ops"} 2.0\n')
    assert metrics.unsafe_labels(text) == [("broadcaster_send_requests_total", "template", "919876543210")]


# ---- the server -------------------------------------------------------------------------------------------

def test_metrics_server_serves_the_registry_from_its_own_thread() -> None:
    metrics.record_escalation("server_test")
    server, thread = metrics.start_metrics_server(0)
    try:
        assert thread.is_alive() and thread is not threading.current_thread()
        resp = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5)
        assert resp.status_code == 200
        assert 'broadcaster_escalations_total{team="server_test"}' in resp.text
        assert "process_cpu_seconds_total" in resp.text
        assert metrics.unsafe_labels(resp.text) == []
    finally:
        metrics.stop_metrics_server(server, thread)
    assert not thread.is_alive()


async def test_a_scrape_does_not_run_on_the_trio_loop() -> None:
    """A blocking scrape made *from* the trio thread completes: the server cannot need this loop."""
    server, thread = metrics.start_metrics_server(0)
    try:
        resp = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5)  # noqa: ASYNC210
        assert resp.status_code == 200
    finally:
        metrics.stop_metrics_server(server, thread)


def test_metrics_server_port_in_use_names_host_and_port() -> None:
    server, thread = metrics.start_metrics_server(0)
    try:
        with pytest.raises(OSError, match=rf"^\[Errno \d+\] metrics server cannot listen on 127\.0\.0\.1:"
                                          rf"{server.server_port}: "):
            metrics.start_metrics_server(server.server_port)
    finally:
        metrics.stop_metrics_server(server, thread)
