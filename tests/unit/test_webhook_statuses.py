"""Status parsing and the forward-only state rules (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broadcaster.inbound.statuses import (
    RANKS,
    StatusEvent,
    UnrecognisedStatus,
    clean_text,
    dedupe,
    final_state,
    next_state,
    parse_status,
    parse_timestamp,
)

RECEIVED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

SENT = {  # API doc §4.4, with our callback data
    "id": "wamid.HBgLOTE5ODc2NTQzMjEwFQIAERgSQjY", "status": "sent", "timestamp": "1750030073",
    "recipient_id": "919876543210", "biz_opaque_callback_data": "42:981",
    "conversation": {"id": "72b1", "expiration_timestamp": "1750116480", "origin": {"type": "marketing"}},
    "pricing": {"billable": True, "pricing_model": "PMP", "type": "regular", "category": "marketing"},
}
FAILED = {
    "id": "wamid.HBgLOTE5ODc2NTQzMjEwFQIAERgSQjY", "status": "failed", "timestamp": "1751142888",
    "recipient_id": "919876543210",
    "errors": [{"code": 131049,
                "title": "This message was not delivered to maintain healthy ecosystem engagement.",
                "message": "This message was not delivered to maintain healthy ecosystem engagement.",
                "error_data": {"details": "In order to maintain a healthy ecosystem engagement, "
                                          "the message failed to be delivered."},
                "href": "/documentation/business-messaging/whatsapp/support/error-codes"}],
}


def parse(item: object, **kw: object) -> StatusEvent:
    return parse_status(item, webhook_event_id=7, received_at=RECEIVED, **kw)  # type: ignore[arg-type]


def test_sent_status_with_callback_data() -> None:
    ev = parse(SENT)
    assert ev.wamid == SENT["id"] and ev.status == "sent"
    assert ev.ts == datetime.fromtimestamp(1750030073, UTC)
    assert (ev.callback_campaign_id, ev.callback_ledger_id) == (42, 981)
    assert ev.callback_data == "42:981" and ev.recipient_id == "919876543210"
    assert ev.webhook_event_id == 7 and ev.error_code is None


def test_failed_status_keeps_code_title_details() -> None:
    ev = parse(FAILED)
    assert ev.error_code == 131049
    assert ev.error_title == "This message was not delivered to maintain healthy ecosystem engagement."
    assert ev.error_details is not None and ev.error_details.startswith("In order to maintain")


def test_value_level_error_is_preferred_like_pywa() -> None:
    ev = parse(FAILED, value_errors=[{"code": 131026, "title": "Message undeliverable"}])
    assert (ev.error_code, ev.error_title) == (131026, "Message undeliverable")


def test_foreign_or_oversized_callback_data_is_not_a_ledger_match() -> None:
    for value in ("cmp42:r981", "42:981:3", "", "abc", "99999999999:1", "1:" + "9" * 30):
        ev = parse({**SENT, "biz_opaque_callback_data": value})
        assert ev.callback_ledger_id is None and ev.callback_campaign_id is None, value


@pytest.mark.parametrize("item, message", [
    ("sent", r"^status is a str, not an object$"),
    ({"status": "sent"}, r"^status has no 'id' \(the wamid\)$"),
    ({"id": "  ", "status": "sent"}, r"^status has no 'id'"),
    ({"id": "w" * 600, "status": "sent"}, r"^status 'id' is not a wamid \(600 characters\)$"),
    ({"id": "wamid.1", "status": "deleted"}, r"^status 'deleted' of wamid\.1 is not one of \["),
    ({"id": "wamid.1"}, r"^status None of wamid\.1 is not one of"),
])
def test_unrecognised_statuses_are_refused_with_a_reason(item: object, message: str) -> None:
    with pytest.raises(UnrecognisedStatus, match=message):
        parse(item)


def test_timestamps_strings_numbers_and_garbage() -> None:
    assert parse_timestamp("1750030073", RECEIVED) == datetime.fromtimestamp(1750030073, UTC)
    assert parse_timestamp(1750030073, RECEIVED) == datetime.fromtimestamp(1750030073, UTC)
    for bad in (None, "", "soon", "-5", "1e400", "nan", 10**20, "inf"):
        assert parse_timestamp(bad, RECEIVED) == RECEIVED, bad


def test_text_is_made_safe_for_postgres() -> None:
    assert clean_text("a\x00b") == "a\ufffdb"
    assert clean_text("x" * 5000) == "x" * 2000
    assert clean_text(None) is None


def test_dedupe_keeps_the_first_per_wamid_and_status() -> None:
    a, b = parse(SENT), parse({**SENT, "timestamp": "1750030099"})
    c = parse(FAILED)
    assert dedupe([a, b, c, a]) == [a, c]


LEDGER_STATES = ["pending", "claimed", "unknown", "accepted", "sent", "delivered", "read", "failed", "skipped"]
STATUSES = ["sent", "delivered", "read", "failed", "played"]


@given(st.sampled_from(LEDGER_STATES), st.lists(st.sampled_from(STATUSES), max_size=12), st.randoms())
def test_final_state_is_the_max_rank_and_failed_is_kept(current: str, events: list[str], rnd) -> None:  # noqa: ANN001
    """Any order, any subset, any repetition: failed if any failed (or already failed), else the
    highest rank of the current state and the events."""
    shuffled = list(events)
    rnd.shuffle(shuffled)
    got = final_state(current, shuffled)
    assert got == final_state(current, events) == final_state(current, events + events)
    if current == "failed" or "failed" in events:
        assert got == "failed"
    else:
        ranked = [current, *[e for e in events if e in RANKS]]
        assert RANKS.get(got, 0) == max(RANKS.get(s, 0) for s in ranked)
        assert got == current or got in events


@given(st.sampled_from(LEDGER_STATES), st.lists(st.lists(st.sampled_from(STATUSES), max_size=4), max_size=5))
def test_applying_in_batches_equals_applying_at_once(current: str, batches: list[list[str]]) -> None:
    state = current
    for batch in batches:
        state = final_state(state, batch)
    assert state == final_state(current, [e for b in batches for e in b])


def test_next_state_never_moves_backwards() -> None:
    assert next_state("read", "delivered", False) == "read"
    assert next_state("delivered", "sent", False) == "delivered"
    assert next_state("accepted", "sent", False) == "sent"
    assert next_state("unknown", "delivered", False) == "delivered"
    assert next_state("delivered", None, True) == "failed"
    assert next_state("failed", "read", False) == "failed"
    assert next_state("claimed", None, False) == "claimed"
