"""Inbound message wire shapes (Cloud API §4.5) → `InboundMessage`. Pure.

Kinds: text (`text.body`), template button tap (`button.payload` + label `button.text`),
interactive (`button_reply` / `list_reply`: id → payload, title → text), media (image, video,
audio, document, sticker: metadata only, caption as text), location/contacts (metadata), reaction
(stored, never routed), anything else (stored by type). `context.id` is the business message the
contact replied to (a broadcast's wamid links the reply to its campaign).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from broadcaster.inbound.statuses import MAX_WAMID
from segments.phones import is_wa_id

__all__ = ["MEDIA_TYPES", "InboundMessage", "MalformedMessage", "parse_message"]

MEDIA_TYPES = frozenset({"image", "video", "audio", "document", "sticker"})
_MEDIA_FIELDS = ("id", "mime_type", "sha256", "filename", "animated", "voice")


class MalformedMessage(ValueError):
    """A `messages[]` item cannot be stored (no id, or no sender at all)."""


@dataclass(frozen=True)
class InboundMessage:
    wamid: str
    wa_id: str
    type: str
    sent_at: datetime
    body: str | None = None  # text, button label, interactive title or media caption
    payload: str | None = None  # button payload / interactive reply id / reaction emoji
    media: dict[str, Any] | None = None
    context_wamid: str | None = None
    user_id: str | None = None
    profile_name: str | None = None
    phone_number_id: str | None = None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _timestamp(value: object, fallback: datetime) -> datetime:
    try:
        return datetime.fromtimestamp(int(str(value)), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return fallback


def parse_message(message: Mapping[str, Any], contacts: list[Any], metadata: Mapping[str, Any],
                  now: datetime) -> InboundMessage:
    """One `value.messages[]` item with the value's `contacts[]` and `metadata`.

    Raises:
        MalformedMessage: no `id`, or neither `from` nor a contact `wa_id` (a username-only user).
    """
    wamid = _str(message.get("id"))
    if wamid is None:
        raise MalformedMessage("inbound message without an id: cannot be deduplicated")
    if len(wamid) > MAX_WAMID or not wamid.isprintable():
        raise MalformedMessage(f"inbound message id is not a wamid ({len(wamid)} characters)")
    contact: Mapping[str, Any] = {}
    sender = _str(message.get("from"))
    for item in contacts if isinstance(contacts, list) else []:
        if isinstance(item, dict) and (sender is None or item.get("wa_id") == sender):
            contact = item
            break
    wa_id = sender or _str(contact.get("wa_id"))
    if wa_id is None:
        raise MalformedMessage(f"inbound message {wamid}: no `from` and no contact wa_id "
                               "(a username-only user); it is not routed")
    if not is_wa_id(wa_id):
        raise MalformedMessage(f"inbound message {wamid}: sender {wa_id[:24]!r} is not a WhatsApp number")
    profile = contact.get("profile")
    kind = _str(message.get("type")) or "unknown"
    body = payload = None
    media: dict[str, Any] | None = None
    section = message.get(kind)
    section = section if isinstance(section, dict) else {}
    if kind == "text":
        body = _str(section.get("body"))
    elif kind == "button":
        body, payload = _str(section.get("text")), _str(section.get("payload"))
    elif kind == "interactive":
        sub = _str(section.get("type")) or "unknown"
        reply = section.get(sub) if isinstance(section.get(sub), dict) else {}
        body, payload = _str(reply.get("title")) or _str(reply.get("body")), _str(reply.get("id"))
        media = {"interactive": sub}
    elif kind in MEDIA_TYPES:
        body = _str(section.get("caption"))
        media = {"kind": kind, **{k: section[k] for k in _MEDIA_FIELDS if k in section}}
    elif kind == "location":
        media = {"kind": "location", **{k: section[k] for k in ("latitude", "longitude", "name", "address")
                                         if k in section}}
    elif kind == "contacts":
        shared = message.get("contacts")
        media = {"kind": "contacts", "count": len(shared) if isinstance(shared, list) else 0}
    elif kind == "reaction":
        payload = _str(section.get("emoji"))
        media = {"kind": "reaction", "message_id": section.get("message_id")}
    context = message.get("context")
    context_wamid = _str(context.get("id")) if isinstance(context, dict) else None
    return InboundMessage(
        wamid=wamid, wa_id=wa_id, type=kind, sent_at=_timestamp(message.get("timestamp"), now),
        body=body, payload=payload, media=media, context_wamid=context_wamid,
        user_id=_str(contact.get("user_id")) or _str(message.get("from_user_id")),
        profile_name=_str(profile.get("name")) if isinstance(profile, dict) else None,
        phone_number_id=_str(metadata.get("phone_number_id")) if isinstance(metadata, dict) else None,
    )
