"""broadcaster.health, pure parts: the guard decision, webhook values, the rate under quality,
what `campaign status` and Slack say."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broadcaster.errors import UsageError
from broadcaster.health import (
    DEFAULT_GUARDS,
    GuardConfig,
    GuardTrip,
    HealthError,
    WindowCounts,
    describe_pause,
    evaluate,
    guard_alert,
    mps_for_quality,
    normalise_quality,
    parse_limit,
    parse_number_change,
    parse_template_change,
)

# ---- the guard decision -------------------------------------------------------------------------

counts_st = st.builds(
    WindowCounts,
    accepted=st.integers(0, 5000), sync_failed=st.integers(0, 500), failed=st.integers(0, 2000),
    failed_optout=st.integers(0, 200), stop_replies=st.integers(0, 300))
config_st = st.builds(
    GuardConfig,
    optout_share=st.none() | st.floats(0.001, 1.0), failure_share=st.none() | st.floats(0.001, 1.0),
    window_s=st.integers(10, 86_400), min_sample=st.integers(1, 1000))


@given(counts_st, config_st)
def test_a_guard_trips_exactly_when_its_share_is_over_threshold_with_enough_sample(
        counts: WindowCounts, config: GuardConfig) -> None:
    verdict = evaluate(counts, config)
    attempts = counts.accepted + counts.sync_failed
    enough = attempts >= config.min_sample and attempts > 0
    optout = enough and config.optout_share is not None and \
        (counts.stop_replies + counts.failed_optout) / attempts > config.optout_share
    failure = enough and config.failure_share is not None and counts.failed / attempts > config.failure_share
    if optout:
        assert verdict is not None and verdict[0] == "optout_spike"  # looked at first
    elif failure:
        assert verdict is not None and verdict[0] == "failure_spike"
    else:
        assert verdict is None
    if verdict is not None:
        guard, detail = verdict
        assert detail["attempts"] == attempts and detail["min_sample"] == config.min_sample
        assert detail["share"] >= round(detail["threshold"], 4)  # the share shown is rounded to 4 places


def test_three_percent_stop_trips_the_default_two_percent_guard_and_names_its_numbers() -> None:
    verdict = evaluate(WindowCounts(accepted=1000, stop_replies=25, failed=6, failed_optout=5), DEFAULT_GUARDS)
    assert verdict == ("optout_spike", {
        "attempts": 1000, "window_min": 10.0, "min_sample": 200, "opt_outs": 30, "stop_replies": 25,
        "failed_131050": 5, "share": 0.03, "threshold": 0.02})


def test_no_guard_trips_below_the_minimum_sample_or_at_exactly_the_threshold() -> None:
    assert evaluate(WindowCounts(accepted=199, stop_replies=100), DEFAULT_GUARDS) is None
    assert evaluate(WindowCounts(accepted=1000, stop_replies=20), DEFAULT_GUARDS) is None  # 2 % is not over 2 %
    assert evaluate(WindowCounts(accepted=1000, failed=200), DEFAULT_GUARDS) is None


def test_failure_spike_counts_every_code_and_sync_failures_in_the_sample() -> None:
    counts = WindowCounts(accepted=150, sync_failed=100, failed=110, codes={"131026": 100, "131000": 10})
    verdict = evaluate(counts, DEFAULT_GUARDS)
    assert verdict is not None
    assert verdict[0] == "failure_spike"
    assert (verdict[1]["failed"], verdict[1]["attempts"], verdict[1]["share"]) == (110, 250, 0.44)
    assert verdict[1]["codes"] == {"131026": 100, "131000": 10}


def test_a_guard_set_off_never_trips() -> None:
    off = GuardConfig(optout_share=None, failure_share=None)
    assert evaluate(WindowCounts(accepted=1000, stop_replies=900, failed=900), off) is None


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"optout_share": 0.0}, r"^--optout-share 0\.0: must be a share in \(0, 1\]"),
    ({"failure_share": 1.5}, r"^--failure-share 1\.5: must be a share in \(0, 1\]"),
    ({"window_s": 5}, r"^--window-min 0\.0833333: the window must be 10 s to 24 h$"),
    ({"min_sample": 0}, r"^--min-sample 0: must be at least 1$"),
])
def test_bad_thresholds_are_refused_naming_the_option(kwargs: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        GuardConfig(**kwargs)


# ---- webhook values (API doc §4.6) --------------------------------------------------------------

def test_template_status_update_values() -> None:
    paused = parse_template_change({
        "event": "PAUSED", "message_template_id": 1234, "message_template_name": "diwali_offer",
        "message_template_language": "hi", "reason": "LOW_QUALITY",
        "other_info": {"title": "FIRST_PAUSE", "description": "paused for 3 hours"}})
    assert (paused.name, paused.language, paused.status, paused.reason, paused.title) == (
        "diwali_offer", "hi", "PAUSED", "LOW_QUALITY", "FIRST_PAUSE")
    approved = parse_template_change({"event": "APPROVED", "message_template_name": "diwali_offer",
                                      "message_template_language": "hi", "reason": "NONE"})
    assert (approved.status, approved.reason) == ("APPROVED", None)
    assert parse_template_change({"event": "reinstated", "message_template_name": "x",
                                  "message_template_language": "en"}).status == "APPROVED"
    flagged = parse_template_change({"event": "FLAGGED", "message_template_name": "x",
                                     "message_template_language": "en"})
    assert (flagged.status, flagged.event) == (None, "FLAGGED")  # a warning, not a status


@pytest.mark.parametrize("missing", ["message_template_name", "message_template_language", "event"])
def test_template_status_update_without_a_field_names_it(missing: str) -> None:
    value = {"event": "PAUSED", "message_template_name": "x", "message_template_language": "en"}
    value[missing] = " "
    with pytest.raises(HealthError, match=rf"^message_template_status_update: field {missing} is missing or empty$"):
        parse_template_change(value)


def test_phone_number_quality_update_flagged_is_red_and_names_the_limit() -> None:
    change = parse_number_change("phone_number_quality_update", {
        "display_phone_number": "+1 555-078-3881", "event": "FLAGGED", "current_limit": "TIER_10K"})
    assert (change.display_phone_number, change.quality, change.tier, change.event) == (
        "15550783881", "RED", 10_000, "FLAGGED")
    assert change.changes_tier


def test_phone_number_quality_update_fields_in_order_of_trust() -> None:
    newer = parse_number_change("phone_number_quality_update", {
        "display_phone_number": "15550783881", "event": "DOWNGRADE", "old_limit": "TIER_10K",
        "current_limit": "TIER_10K", "max_daily_conversations_per_business": "TIER_2K"})
    assert (newer.tier, newer.quality) == (2000, None)
    explicit = parse_number_change("phone_number_quality_update", {"event": "UNFLAGGED", "quality_rating": "YELLOW"})
    assert explicit.quality == "YELLOW"  # the score wins over what the event implies
    unlimited = parse_number_change("phone_number_quality_update", {"event": "UPGRADE",
                                                                    "current_limit": "TIER_UNLIMITED"})
    assert unlimited.changes_tier and unlimited.tier is None
    throughput = parse_number_change("phone_number_quality_update", {"event": "THROUGHPUT_UPGRADE",
                                                                     "current_limit": "TIER_UNLIMITED"})
    assert not throughput.changes_tier  # that limit field is the throughput level, not the tier
    capability = parse_number_change("business_capability_update", {"max_daily_conversation_per_phone": 1000})
    assert capability.tier == 1000


@pytest.mark.parametrize(("raw", "quality"), [
    ("GREEN", "GREEN"), ("yellow", "YELLOW"), ("LOW", "RED"), ("HIGH", "GREEN"), ("FLAGGED", "RED"),
    ("UNKNOWN", "UNKNOWN"), ("PURPLE", None), (3, None), (None, None)])
def test_quality_words(raw: object, quality: str | None) -> None:
    assert normalise_quality(raw) == quality


@pytest.mark.parametrize(("raw", "tier"), [("TIER_250", 250), ("TIER_2K", 2000), ("TIER_1K", 1000), ("2000", 2000),
                                           (100_000, 100_000), ("TIER_UNLIMITED", None)])
def test_limits(raw: object, tier: int | None) -> None:
    assert parse_limit(raw) == tier


@pytest.mark.parametrize("raw", ["TIER_NOT_SET", "", 0, True, None, "lots"])
def test_values_that_name_no_limit_keep_the_tier(raw: object) -> None:
    assert not parse_number_change("account_update", {"current_limit": raw}).changes_tier


# ---- rate under quality -------------------------------------------------------------------------

def test_red_halves_the_rate_yellow_takes_a_quarter_off_green_restores() -> None:
    assert [mps_for_quality(80, q) for q in ("GREEN", "YELLOW", "RED", "UNKNOWN", None)] == [80, 60, 40, 80, 80]
    assert mps_for_quality(1, "RED") == 1


@given(st.integers(1, 1000))
def test_the_rate_never_exceeds_the_ceiling_and_falls_with_quality(ceiling: int) -> None:
    rates = [mps_for_quality(ceiling, q) for q in ("GREEN", "YELLOW", "RED")]
    assert rates[0] == ceiling
    assert ceiling >= rates[1] >= rates[2] >= 1


# ---- what people read ---------------------------------------------------------------------------

def _trip() -> GuardTrip:
    verdict = evaluate(WindowCounts(accepted=1000, stop_replies=25, failed_optout=6), DEFAULT_GUARDS)
    assert verdict is not None
    return GuardTrip(7, "diwali_blast", "acme", verdict[0], {"guard": verdict[0], **verdict[1]})


def test_status_line_names_the_guard_and_its_numbers() -> None:
    trip = _trip()
    assert describe_pause(trip.guard, trip.detail, "diwali_blast") == (
        "guard optout_spike: 31 opt-outs (25 STOP replies + 6 × 131050) in 1000 sends = 3.1 % > 2.0 % over 10.0 min;"
        " a manager may override: `campaign resume diwali_blast --force`")
    assert describe_pause("template_paused", {"template": "t", "language": "hi", "status": "PAUSED",
                                              "reason": "LOW_QUALITY"}) == (
        "template t/hi is PAUSED, LOW_QUALITY: resumes by itself when WhatsApp approves it again")
    assert describe_pause("circuit_breaker:131031", {"code": 131031}) == "circuit_breaker:131031: code=131031"
    assert describe_pause("manual", None) == "manual"
    assert describe_pause(None, None) is None


def test_slack_alert_names_campaign_and_override_and_has_no_phone_numbers() -> None:
    body = guard_alert(_trip())
    assert body["text"].startswith("Campaign diwali_blast (acme) paused: opt-out spike. guard optout_spike: 31")
    assert "`broadcaster campaign resume diwali_blast --force`" in str(body["blocks"])
    assert not re.search(r"\d{8,}", str(body))
