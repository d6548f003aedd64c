"""Splitting a webhook body into statuses, recognised changes and dead letters (pure)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from broadcaster.inbound.envelope import jsonable, parse_webhook

RECEIVED = datetime(2026, 1, 2, tzinfo=UTC)


def status(wamid: str, name: str) -> dict[str, Any]:
    return {"id": wamid, "status": name, "timestamp": "1750030073", "recipient_id": "919876543210"}


def envelope(*changes: dict[str, Any], entries: int = 1) -> bytes:
    return orjson.dumps({"object": "whatsapp_business_account",
                         "entry": [{"id": "102290129340398", "changes": list(changes)}] * entries})


def messages_change(**value: Any) -> dict[str, Any]:
    return {"field": "messages", "value": {"messaging_product": "whatsapp",
                                           "metadata": {"display_phone_number": "15550783881",
                                                        "phone_number_id": "106540352242922"},
                                           **value}}


def parse(body: bytes):  # noqa: ANN201
    return parse_webhook(body, webhook_event_id=3, received_at=RECEIVED)


def test_every_entry_change_and_status_is_visited() -> None:
    doc = {"object": "whatsapp_business_account", "entry": [
        {"id": "w", "changes": [messages_change(statuses=[status(f"wamid.{e}{c}{s}", "sent")
                                                          for s in range(3)]) for c in range(2)]}
        for e in range(2)]}
    parsed = parse(orjson.dumps(doc))
    assert sorted(ev.wamid for ev in parsed.statuses) == sorted(
        f"wamid.{e}{c}{s}" for e in range(2) for c in range(2) for s in range(3))
    assert parsed.dead == [] and parsed.changes == []
    assert {ev.webhook_event_id for ev in parsed.statuses} == {3}


def test_unknown_field_is_a_dead_letter_with_its_location() -> None:
    parsed = parse(envelope(messages_change(statuses=[status("wamid.1", "read")]),
                            {"field": "calls", "value": {"calls": []}}))
    assert [ev.status for ev in parsed.statuses] == ["read"]
    (dead,) = parsed.dead
    assert (dead.location, dead.field, dead.reason) == ("entry[0].changes[1]", "calls", "unknown field 'calls'")
    assert dead.payload == {"field": "calls", "value": {"calls": []}}


def test_recognised_fields_are_changes_not_dead_letters() -> None:
    value = {"event": "PAUSED", "message_template_id": 1, "message_template_name": "diwali",
             "message_template_language": "hi", "reason": "LOW_QUALITY"}
    parsed = parse(envelope({"field": "message_template_status_update", "value": value},
                            {"field": "phone_number_quality_update", "value": {"event": "FLAGGED"}}))
    assert [(c.field, c.value) for c in parsed.changes] == [
        ("message_template_status_update", value), ("phone_number_quality_update", {"event": "FLAGGED"})]
    assert parsed.dead == []


def test_inbound_messages_go_to_the_inbox_without_the_statuses() -> None:
    msg = {"from": "16505551234", "id": "wamid.in1", "timestamp": "1749416383", "type": "text",
           "text": {"body": "Does it come in another color? 🎨"}}
    contacts = [{"profile": {"name": "Sheena Nelson"}, "wa_id": "16505551234"}]
    parsed = parse(envelope(messages_change(contacts=contacts, messages=[msg],
                                            statuses=[status("wamid.1", "delivered")])))
    (change,) = parsed.changes
    assert change.field == "messages"
    assert change.value["messages"] == [msg] and change.value["contacts"] == contacts
    assert "statuses" not in change.value
    assert [ev.status for ev in parsed.statuses] == ["delivered"]


def test_value_level_errors_alone_are_kept_as_a_change() -> None:
    errors = [{"code": 131000, "title": "Something went wrong"}]
    parsed = parse(envelope(messages_change(errors=errors)))
    assert [(c.field, c.value["errors"]) for c in parsed.changes] == [("messages.errors", errors)]


def test_bad_status_items_are_dead_letters_and_the_rest_still_count() -> None:
    parsed = parse(envelope(messages_change(statuses=[status("wamid.1", "sent"), {"status": "sent"},
                                                      status("wamid.2", "deleted"), "x"])))
    assert [ev.wamid for ev in parsed.statuses] == ["wamid.1"]
    assert [(d.location, d.reason.split(" ")[0]) for d in parsed.dead] == [
        ("entry[0].changes[0].value.statuses[1]", "status"),
        ("entry[0].changes[0].value.statuses[2]", "status"),
        ("entry[0].changes[0].value.statuses[3]", "status")]


def test_bodies_that_are_not_whatsapp_envelopes_are_dead_letters() -> None:
    cases = {
        b"not json at all": "body is not JSON",
        b"[1, 2]": "object is 'list', not 'whatsapp_business_account'",
        orjson.dumps({"object": "page", "entry": []}): "object is 'page', not 'whatsapp_business_account'",
        orjson.dumps({"object": "whatsapp_business_account"}): "'entry' is missing or not a list",
    }
    for body, reason in cases.items():
        (dead,) = parse(body).dead
        assert dead.location == "body" and dead.reason.startswith(reason), (body, dead.reason)


def test_malformed_entries_and_changes_name_their_place() -> None:
    body = orjson.dumps({"object": "whatsapp_business_account", "entry": [
        {"id": "w"}, {"id": "w", "changes": [7, {"field": "messages"}, messages_change()]}]})
    assert [(d.location, d.reason) for d in parse(body).dead] == [
        ("entry[0]", "'changes' is missing or not a list"),
        ("entry[1].changes[0]", "change is a int, not an object"),
        ("entry[1].changes[1]", "change has no string 'field' and object 'value'"),
        ("entry[1].changes[2]", "'messages' change with no statuses, messages or errors"),
    ]


def test_jsonable_removes_nul_everywhere() -> None:
    assert jsonable({"a\x00": ["b\x00", 1, {"c": "\x00"}]}) == {"a\ufffd": ["b\ufffd", 1, {"c": "\ufffd"}]}
