"""Split one stored webhook body into what the apply worker does with it (pure, never raises).

    { "object": "whatsapp_business_account",
      "entry": [ { "id": WABA, "changes": [ { "field": F, "value": {…} } ] } ] }   (API doc §4.3)

Every `entry[]`, `changes[]` and `statuses[]` is visited (one POST can batch 1,000 updates):
- field 'messages': `statuses[]` → status events; `messages[]` → a change for the inbox (the value
  without its statuses); `errors[]` alone → a change 'messages.errors' (kept, logged);
- a field in RECOGNISED_FIELDS → a change for the health monitor;
- anything else, or any part that does not have the documented shape → a dead letter naming
  where it is and why. Nothing authentic is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from broadcaster.inbound.statuses import StatusEvent, UnrecognisedStatus, parse_status

__all__ = ["RECOGNISED_FIELDS", "Change", "DeadLetter", "Parsed", "jsonable", "parse_webhook"]

WHATSAPP_OBJECT = "whatsapp_business_account"
MESSAGES_FIELD = "messages"
VALUE_ERRORS_FIELD = "messages.errors"
# Webhook fields other than `messages` that we know (API doc §4.6): stored, handed to the health
# monitor when it is installed, never dead letters.
RECOGNISED_FIELDS = frozenset({
    "message_template_status_update", "message_template_quality_update",
    "message_template_components_update", "template_category_update",
    "phone_number_quality_update", "phone_number_name_update", "business_capability_update",
    "account_alerts", "account_update", "account_review_update", "user_preferences", "security",
})


@dataclass(frozen=True, slots=True)
class Change:
    """A recognised non-status change, stored in `webhook_changes`."""

    field: str
    value: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An authentic but unrecognised part of a body, stored in `webhook_dead_letters`."""

    location: str  # 'body', 'entry[0]', 'entry[0].changes[1]', '….value.statuses[3]'
    reason: str
    payload: Any = None  # the part as parsed (None when the body is not JSON)
    field: str | None = None


@dataclass(slots=True)
class Parsed:
    statuses: list[StatusEvent] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)


def jsonable(value: Any) -> Any:
    """`value` with NUL characters replaced: Postgres jsonb refuses \\u0000 in strings and keys."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, dict):
        return {jsonable(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value


def parse_webhook(body: bytes, *, webhook_event_id: int, received_at: datetime) -> Parsed:
    """Everything in one webhook body: status events, recognised changes, dead letters."""
    out = Parsed()
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        out.dead.append(DeadLetter("body", f"body is not JSON: {exc}"))
        return out
    if not isinstance(doc, dict) or doc.get("object") != WHATSAPP_OBJECT:
        found = doc.get("object") if isinstance(doc, dict) else type(doc).__name__
        out.dead.append(DeadLetter("body", f"object is {found!r}, not {WHATSAPP_OBJECT!r}", doc))
        return out
    entries = doc.get("entry")
    if not isinstance(entries, list):
        out.dead.append(DeadLetter("body", "'entry' is missing or not a list", doc))
        return out
    for i, entry in enumerate(entries):
        changes = entry.get("changes") if isinstance(entry, dict) else None
        if not isinstance(changes, list):
            out.dead.append(DeadLetter(f"entry[{i}]", "'changes' is missing or not a list", entry))
            continue
        for j, change in enumerate(changes):
            _parse_change(out, change, f"entry[{i}].changes[{j}]", webhook_event_id, received_at)
    return out


def _parse_change(out: Parsed, change: Any, where: str, event_id: int, received_at: datetime) -> None:
    if not isinstance(change, dict):
        out.dead.append(DeadLetter(where, f"change is a {type(change).__name__}, not an object", change))
        return
    name = change.get("field")
    value = change.get("value")
    if not isinstance(name, str) or not isinstance(value, dict):
        out.dead.append(DeadLetter(where, "change has no string 'field' and object 'value'", change,
                                   name if isinstance(name, str) else None))
        return
    if name in RECOGNISED_FIELDS:
        out.changes.append(Change(name, value))
        return
    if name != MESSAGES_FIELD:
        out.dead.append(DeadLetter(where, f"unknown field {name!r}", change, name))
        return
    statuses = value.get("statuses")
    messages = value.get("messages")
    errors = value.get("errors")
    if statuses is None and messages is None and errors is None:
        out.dead.append(DeadLetter(where, "'messages' change with no statuses, messages or errors",
                                   change, name))
        return
    if statuses is not None:
        if not isinstance(statuses, list):
            out.dead.append(DeadLetter(f"{where}.value.statuses", "'statuses' is not a list",
                                       statuses, name))
        else:
            for k, item in enumerate(statuses):
                try:
                    out.statuses.append(parse_status(item, webhook_event_id=event_id,
                                                     received_at=received_at, value_errors=errors))
                except UnrecognisedStatus as exc:
                    out.dead.append(DeadLetter(f"{where}.value.statuses[{k}]", str(exc), item, name))
    if messages is not None:
        if isinstance(messages, list):
            out.changes.append(Change(MESSAGES_FIELD,
                                      {k: v for k, v in value.items() if k != "statuses"}))
        else:
            out.dead.append(DeadLetter(f"{where}.value.messages", "'messages' is not a list",
                                       messages, name))
    elif errors is not None and statuses is None:
        out.changes.append(Change(VALUE_ERRORS_FIELD, value))
