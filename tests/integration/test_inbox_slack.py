"""Slack escalations against a real HTTP receiver on 127.0.0.1: one post per conversation
escalation, retried through failures, queued so the webhook path never waits for Slack."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest
import trio

from broadcaster.config import Settings
from broadcaster.db import Database
from broadcaster.httpserver import Request, Response, serve_http
from broadcaster.inbox.conversations import escalate_conversation
from broadcaster.inbox.slack import SlackConfig, escalation_message, send_due_escalations
from broadcaster.inbox.worker import run_inbox_worker
from broadcaster.transport import SendResult
from tests.integration.test_inbox_handler import T0, add_contact, make_env, text, value_for

_CONV = re.compile(r"Conversation (\d+) needs a human")


class SlackReceiver:
    """A fake incoming webhook: fails the first `fail_first` POSTs of each conversation with
    `fail_status`, then answers 200 "ok". Optionally holds every answer until `release` is set."""

    def __init__(self, fail_first: int = 0, fail_status: int = 500, hold: bool = False) -> None:
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.requests: Counter[int] = Counter()
        self.accepted: dict[int, list[dict]] = defaultdict(list)
        self.release = trio.Event()
        if not hold:
            self.release.set()
        self.got_post = trio.Event()
        self.accepted_event: defaultdict[int, trio.Event] = defaultdict(trio.Event)
        self.url = ""

    async def handle(self, request: Request) -> Response:
        body = orjson.loads(request.body)
        conv = int(_CONV.search(orjson.dumps(body).decode()).group(1))
        self.requests[conv] += 1
        self.got_post.set()
        await self.release.wait()
        if self.requests[conv] <= self.fail_first:
            return Response(self.fail_status, b"server_error" if self.fail_status >= 500 else b"invalid_payload")
        self.accepted[conv].append(body)
        self.accepted_event[conv].set()
        return Response(200, b"ok", {"content-type": "text/plain"})


async def start_receiver(nursery: trio.Nursery, receiver: SlackReceiver) -> SlackReceiver:
    port = await nursery.start(serve_http, receiver.handle, "127.0.0.1", 0)
    receiver.url = f"http://127.0.0.1:{port}/services/T000/B000/XXXX"
    return receiver


def fast(url: str, **kw: object) -> SlackConfig:
    """No backoff waits in tests: the retry logic runs, the clock does not."""
    return SlackConfig(url, wait_initial_s=0.0, wait_max_s=0.0, **kw)  # type: ignore[arg-type]


async def _complaint(db: Database, env, phone: str, body: str = "please stop sending me this spam") -> int:
    [out] = await env.inbox.handle_messages(db, value_for(env, phone, text(body)))
    assert out.escalated
    return out.conversation_id


async def test_one_post_per_escalation_even_when_slack_fails_twice_first(db: Database, uniq: str,
                                                                         phone_factory) -> None:
    env = await make_env(db, uniq)
    phone = phone_factory()
    await add_contact(db, env, phone, language="hi", genre="music", name="Meena S")
    conv = await _complaint(db, env, phone)
    async with trio.open_nursery() as nursery, httpx.AsyncClient() as client:
        slack = await start_receiver(nursery, SlackReceiver(fail_first=2))
        await send_due_escalations(db, client, fast(slack.url))
        assert slack.requests[conv] == 3  # 500, 500, 200
        assert len(slack.accepted[conv]) == 1
        # the same escalation again, three ways: a duplicate webhook, another complex message in the same
        # conversation, an agent marking it; none may post again
        again = value_for(env, phone, text("stop it, this is spam"), at=T0 + timedelta(minutes=1))
        await env.inbox.handle_messages(db, again)
        await env.inbox.handle_messages(db, again)
        assert await escalate_conversation(db, conv, note="angry creator", agent="lead") is False
        await send_due_escalations(db, client, fast(slack.url))
        assert slack.requests[conv] == 3 and len(slack.accepted[conv]) == 1
        nursery.cancel_scope.cancel()
    row = await db.fetchrow("SELECT state, attempts, last_error, sent_at FROM inbox_escalations "
                            "WHERE conversation_id = $1", conv)
    assert (row["state"], row["attempts"], row["last_error"]) == ("sent", 1, None)
    post = slack.accepted[conv][0]
    assert post["text"].startswith(f"Escalation: conversation {conv} from Meena S (********{phone[-4:]})")
    assert phone not in orjson.dumps(post).decode()
    assert post["blocks"][-1]["elements"][0]["text"] == f'Reply with `broadcaster inbox reply {conv} "…"`'


async def test_agent_marked_conversation_is_escalated_once(db: Database, uniq: str, phone_factory) -> None:
    env = await make_env(db, uniq)
    phone = phone_factory()
    await add_contact(db, env, phone)
    [out] = await env.inbox.handle_messages(db, value_for(env, phone, text("can we talk about a brand deal?")))
    assert out.action == "route" and not out.escalated
    assert await escalate_conversation(db, out.conversation_id, note="big brand", agent="asha") is True
    assert await escalate_conversation(db, out.conversation_id) is False
    async with trio.open_nursery() as nursery, httpx.AsyncClient() as client:
        slack = await start_receiver(nursery, SlackReceiver())
        await send_due_escalations(db, client, fast(slack.url))
        nursery.cancel_scope.cancel()
    [post] = slack.accepted[out.conversation_id]
    assert "marked by asha: big brand" in orjson.dumps(post).decode()


async def test_slack_4xx_is_final_and_5xx_gives_up_after_max_claims(db: Database, uniq: str,
                                                                    phone_factory) -> None:
    env = await make_env(db, uniq)
    a, b = phone_factory(), phone_factory()
    await add_contact(db, env, a)
    conv_a = await _complaint(db, env, a)
    async with trio.open_nursery() as nursery, httpx.AsyncClient() as client:
        rejecting = await start_receiver(nursery, SlackReceiver(fail_first=100, fail_status=400))
        await send_due_escalations(db, client, fast(rejecting.url))
        assert rejecting.requests[conv_a] == 1  # a 4xx is not retried
        await add_contact(db, env, b)
        conv_b = await _complaint(db, env, b)
        down = await start_receiver(nursery, SlackReceiver(fail_first=100, fail_status=503))
        await send_due_escalations(db, client, fast(down.url, attempts=3, max_claims=2, requeue_s=0.0))
        assert down.requests[conv_b] == 6  # 3 POSTs per claim × 2 claims
        nursery.cancel_scope.cancel()
    states = {r["conversation_id"]: (r["state"], r["attempts"]) for r in await db.fetch(
        "SELECT conversation_id, state, attempts FROM inbox_escalations WHERE conversation_id = ANY($1::bigint[])",
        [conv_a, conv_b])}
    assert states == {conv_a: ("failed", 1), conv_b: ("failed", 2)}
    error = await db.fetchval("SELECT last_error FROM inbox_escalations WHERE conversation_id = $1", conv_a)
    assert error.startswith("Slack refused the post with HTTP 400: invalid_payload")


class FakeSender:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []
        self.sent_to: defaultdict[str, trio.Event] = defaultdict(trio.Event)

    async def send_text(self, phone_number_id: str, payload: bytes) -> SendResult:
        await trio.lowlevel.checkpoint()
        doc = orjson.loads(payload)
        self.sent.append((phone_number_id, doc))
        self.sent_to[doc["to"]].set()
        return SendResult(wamid=f"wamid.fake.{len(self.sent)}", message_status="accepted")


async def test_the_webhook_path_never_waits_for_slack(db: Database, db_url: str, uniq: str, phone_factory) -> None:
    env = await make_env(db, uniq)
    phone = phone_factory()
    await add_contact(db, env, phone, language="en")
    sender = FakeSender()
    settings = Settings(database_url=db_url, whatsapp_api_url="http://127.0.0.1:9/v25.0")
    async with trio.open_nursery() as nursery:
        slack = await start_receiver(nursery, SlackReceiver(hold=True))  # Slack hangs until released
        await nursery.start(lambda task_status: run_inbox_worker(
            db, settings, sender=sender, slack=fast(slack.url), sweep_s=3600, task_status=task_status))
        with trio.fail_after(10):
            now = datetime.now(UTC)  # the rule answer goes out only inside the real 24 h window
            [out] = await env.inbox.handle_messages(db, value_for(env, phone, text("my account got hacked!!"), at=now))
            assert out.escalated and out.reply_queued  # handled and answered while Slack is stuck
            await slack.got_post.wait()  # the worker was nudged at once (no sweep for an hour)
        assert out.conversation_id not in slack.accepted
        slack.release.set()
        with trio.fail_after(10):
            await slack.accepted_event[out.conversation_id].wait()
            await sender.sent_to[phone].wait()
        nursery.cancel_scope.cancel()
    mine = [p for _, p in sender.sent if p["to"] == phone]
    assert [p["text"]["body"] for p in mine] == ["Thanks for telling us. A teammate is looking into this and will "
                                                 "reply here."]


def test_escalation_message_shape() -> None:
    msg = escalation_message(conversation_id=7, workspace="originals", team="hi-music", contact_name=None,
                             wa_id="919876543210", genre="music", language="hi", text="x" * 1000,
                             reason="rule 3 (urgent) matched keyword 'हैक'", campaign="diwali")
    assert msg["text"].startswith("Escalation: conversation 7 from Unknown creator (********3210), team hi-music: ")
    assert len(msg["text"]) < 800
    fields = " ".join(f["text"] for f in msg["blocks"][1]["fields"])
    assert "*Replying to campaign:* diwali" in fields and "*Language:* hi" in fields


def test_escalation_message_escapes_what_the_creator_wrote() -> None:
    msg = escalation_message(conversation_id=8, workspace="originals", team="hi-music",
                             contact_name="<!here> *Admin* & co", wa_id="919876543210", genre="music",
                             language="hi", text="<!channel> please <https://evil.example/login|verify here>",
                             reason="rule 2 (consent_complaint)")
    shown = [msg["text"], *(f["text"] for f in msg["blocks"][1]["fields"]), msg["blocks"][2]["text"]["text"]]
    for line in shown:
        assert "<!" not in line and "<https" not in line, line
    assert msg["blocks"][2]["text"]["text"] == (
        "> &lt;!channel&gt; please &lt;https://evil.example/login|verify here&gt;")
    assert "*Contact:* &lt;!here&gt; *Admin* &amp; co (********3210)" in shown


def test_slack_config_checks_its_url() -> None:
    with pytest.raises(ValueError, match=r"^SLACK_WEBHOOK_URL must be an http\(s\) URL$"):
        SlackConfig("hooks.slack.com/services/x")
    assert "hooks" not in repr(SlackConfig("https://hooks.slack.com/services/x"))
