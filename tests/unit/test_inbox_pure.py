"""Pure pieces of the inbox: wire parsing, the window check, the text payload, report stats, and the
Slack retry predicate (over httpx's mock transport: no sockets)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from broadcaster.errors import InputError
from broadcaster.inbox.messages import MalformedMessage, parse_message
from broadcaster.inbox.reply import text_payload, window_error
from broadcaster.inbox.report import stats, summarise
from broadcaster.inbox.slack import SlackConfig, SlackRejected, SlackUnavailable, post_escalation

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
META = {"phone_number_id": "106540352242922"}
CONTACTS = [{"profile": {"name": "Sheena"}, "wa_id": "919876543210", "user_id": "IN.123"}]


def parse(message: dict):
    return parse_message({"from": "919876543210", "id": "wamid.A", "timestamp": "1764763200", **message},
                         CONTACTS, META, NOW)


# --------------------------------------------------------------------------- parsing


def test_text_message() -> None:
    msg = parse({"type": "text", "text": {"body": "views?"}})
    assert (msg.type, msg.body, msg.payload, msg.profile_name, msg.user_id) == ("text", "views?", None, "Sheena",
                                                                                 "IN.123")
    assert msg.sent_at == datetime(2025, 12, 3, 12, 0, tzinfo=UTC)
    assert msg.phone_number_id == "106540352242922"


def test_button_tap_with_context() -> None:
    msg = parse({"type": "button", "button": {"payload": "STOP_PROMOTIONS", "text": "Stop promotions"},
                 "context": {"from": "15550783881", "id": "wamid.OUT"}})
    assert (msg.body, msg.payload, msg.context_wamid) == ("Stop promotions", "STOP_PROMOTIONS", "wamid.OUT")


@pytest.mark.parametrize("kind", ["button_reply", "list_reply"])
def test_interactive_replies(kind: str) -> None:
    msg = parse({"type": "interactive", "interactive": {"type": kind, kind: {"id": "faq_views", "title": "Views"}}})
    assert (msg.body, msg.payload, msg.media) == ("Views", "faq_views", {"interactive": kind})


def test_media_is_metadata_only_with_caption_as_text() -> None:
    msg = parse({"type": "document", "document": {"id": "m1", "mime_type": "application/pdf", "filename": "a.pdf",
                                                  "caption": "my payout slip", "url": "https://lookaside/x"}})
    assert msg.body == "my payout slip"
    assert msg.media == {"kind": "document", "id": "m1", "mime_type": "application/pdf", "filename": "a.pdf"}


def test_bad_timestamp_falls_back_to_now_and_missing_id_is_refused() -> None:
    assert parse({"type": "text", "text": {"body": "x"}, "timestamp": "soon"}).sent_at == NOW
    with pytest.raises(MalformedMessage, match=r"^inbound message without an id"):
        parse_message({"from": "1", "type": "text"}, [], META, NOW)
    with pytest.raises(MalformedMessage, match=r"^inbound message wamid\.B: no `from` and no contact wa_id"):
        parse_message({"id": "wamid.B", "type": "text"}, [{"profile": {"name": "x"}}], META, NOW)


@pytest.mark.parametrize(("message", "reason"), [
    ({"id": "wamid." + "x" * 9000, "from": "919876543210"}, r"^inbound message id is not a wamid \(9006 characters\)"),
    ({"id": "wamid.F\n2026 ERROR forged", "from": "919876543210"}, r"^inbound message id is not a wamid"),
    ({"id": "wamid.N", "from": "not-a-number"}, r"^inbound message wamid\.N: sender 'not-a-number' is not a WhatsApp"),
    ({"id": "wamid.L", "from": "9" * 300}, r"^inbound message wamid\.L: sender '9{24}' is not a WhatsApp number"),
])
def test_an_id_or_sender_that_cannot_be_one_is_refused(message: dict, reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason):
        parse_message({**message, "type": "text", "text": {"body": "STOP"}}, [], META, NOW)


@given(st.dictionaries(st.text(max_size=8), st.one_of(st.none(), st.integers(), st.text(max_size=8),
                                                      st.dictionaries(st.text(max_size=4), st.text(max_size=4)))))
def test_parser_never_crashes_on_junk(junk: dict) -> None:
    try:
        parse_message({**junk, "id": "wamid.J", "from": "919876543210"}, [junk], junk, NOW)
    except MalformedMessage:  # pragma: no cover - id and from are always present here
        raise AssertionError("a message with id and from must parse") from None


# --------------------------------------------------------------------------- window and payload


def test_window_error_inside_outside_and_never_opened() -> None:
    assert window_error(4, "919876543210", NOW + timedelta(seconds=1), NOW) is None
    closed = window_error(4, "919876543210", NOW, NOW)
    assert str(closed).startswith("conversation 4: the 24 h customer-service window with ********3210 closed at "
                                  "2026-12-03 12:00 UTC")
    assert "Send an approved template instead" in str(closed)
    never = window_error(4, "919876543210", None, NOW)
    assert "has not written to this number" in str(never)


def test_text_payload_is_the_cloud_api_shape() -> None:
    assert orjson.loads(text_payload("919876543210", "hello", preview_url=True)) == {
        "messaging_product": "whatsapp", "recipient_type": "individual", "to": "919876543210", "type": "text",
        "text": {"preview_url": True, "body": "hello"}}
    with pytest.raises(InputError, match=r"^reply text is 4097 characters; WhatsApp allows 4096$"):
        text_payload("1", "x" * 4097)
    with pytest.raises(InputError, match=r"^reply text is empty$"):
        text_payload("1", "  ")


# --------------------------------------------------------------------------- stats


def test_stats_nearest_rank() -> None:
    assert stats([]).count == 0 and stats([]).median_s is None
    s = stats([60, 900, 300, 120])
    assert (s.count, s.mean_s, s.median_s, s.p90_s, s.max_s) == (4, 345.0, 210.0, 900, 900)
    assert stats(range(1, 11)).p90_s == 9  # 10 values: the 9th
    assert stats(range(1, 12)).p90_s == 10  # 11 values: ceil(9.9) = 10th


def test_summarise_keeps_bot_and_human_apart() -> None:
    t0 = NOW
    rows = [
        {"team": "hi", "status": "resolved", "first_inbound_at": t0, "first_bot_reply_at": t0 + timedelta(seconds=2),
         "first_human_reply_at": None, "first_human_agent": None, "resolved_at": t0 + timedelta(seconds=2),
         "resolved_by": "bot", "resolved_agent": None},
        {"team": None, "status": "queued", "first_inbound_at": t0, "first_bot_reply_at": None,
         "first_human_reply_at": None, "first_human_agent": None, "resolved_at": None, "resolved_by": None,
         "resolved_agent": None},
    ]
    report = summarise(rows)
    assert report["human"]["frt"]["count"] == 0 and report["human"]["resolution"]["count"] == 0
    assert report["bot"]["frt"]["mean_s"] == 2.0 and report["bot"]["resolution"]["count"] == 1
    assert report["teams"]["unrouted"]["queued"] == 1 and report["teams"]["hi"]["bot_frt"]["count"] == 1
    assert report["agents"] == {}


# --------------------------------------------------------------------------- Slack retry predicate


def _client(statuses: list[int | Exception]) -> tuple[httpx.AsyncClient, list[int]]:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        outcome = statuses[min(len(calls), len(statuses)) - 1]
        if isinstance(outcome, Exception):
            raise outcome
        return httpx.Response(outcome, text="ok" if outcome == 200 else "nope")

    return httpx.AsyncClient(transport=httpx.MockTransport(handler)), calls


CONFIG = SlackConfig("https://hooks.slack.test/services/x", attempts=4, wait_initial_s=0.0, wait_max_s=0.0)


@pytest.mark.parametrize(("answers", "posts"), [
    ([200], 1),
    ([500, 500, 200], 3),
    ([429, 200], 2),
    ([httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), 200], 3),
])
async def test_transient_failures_are_retried_until_accepted(answers: list, posts: int) -> None:
    client, calls = _client(answers)
    async with client:
        assert await post_escalation(client, CONFIG, {"text": "x"}) == posts
    assert len(calls) == posts


async def test_4xx_is_not_retried_and_5xx_gives_up_after_attempts() -> None:
    client, calls = _client([404])
    async with client:
        with pytest.raises(SlackRejected, match=r"^Slack refused the post with HTTP 404: nope$"):
            await post_escalation(client, CONFIG, {"text": "x"})
    assert len(calls) == 1
    client, calls = _client([503])
    async with client:
        with pytest.raises(SlackUnavailable, match=r"^Slack answered HTTP 503: nope$"):
            await post_escalation(client, CONFIG, {"text": "x"})
    assert len(calls) == 4
