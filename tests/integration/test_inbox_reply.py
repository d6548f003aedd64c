"""Free-form replies through the real transport to the sandbox: agent replies inside the 24 h
window, refusals outside it (checked here and as 131047 from the API), the bot outbox."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from broadcaster.db import Database
from broadcaster.errors import StateError
from broadcaster.inbound.apply import Hooks
from broadcaster.inbox import directory
from broadcaster.inbox.conversations import resolve_conversation
from broadcaster.inbox.reply import CloudApiSender, WindowClosed, send_agent_reply, send_due_bot_replies
from broadcaster.transport import TransportConfig
from tests.integration.test_inbox_handler import T0, Env, add_contact, make_env, text, value_for
from tests.integration.webhook_support import change, envelope, running_receiver, status


@pytest.fixture
async def sender(sandbox: object) -> AsyncIterator[CloudApiSender]:
    async with CloudApiSender(TransportConfig(api_url=sandbox.base_url, token="test-token")) as s:  # type: ignore[attr-defined]
        yield s


async def sandbox_texts(sandbox: object, wa_id: str) -> list[str]:
    base = sandbox.base_url.rsplit("/", 1)[0]  # type: ignore[attr-defined]
    async with httpx.AsyncClient() as client:
        sent = (await client.get(f"{base}/_sandbox/messages", params={"limit": 2000})).json()
    return [m["text"]["body"] for m in sent if m.get("type") == "text" and m.get("to") == wa_id]


async def _open_conversation(db: Database, env: Env, phone: str, at: datetime, body: str = "need help") -> int:
    [out] = await env.inbox.handle_messages(db, value_for(env, phone, text(body), at=at), now=at)
    return out.conversation_id


async def test_agent_reply_inside_the_window_is_sent_and_sets_frt(db: Database, uniq: str, phone_factory,
                                                                  sandbox: object, sender: CloudApiSender) -> None:
    env = await make_env(db, uniq)
    await directory.add_team(db, env.workspace, "all", routes=[(None, None)])
    await directory.add_agent(db, env.workspace, "asha", max_open=0)  # at the cap: the conversation queues
    await directory.join_team(db, env.workspace, "all", "asha")
    phone = phone_factory()
    await add_contact(db, env, phone)
    opened = datetime.now(UTC) - timedelta(minutes=10)
    conv = await _open_conversation(db, env, phone, opened)
    assert await db.fetchval("SELECT status FROM inbox_conversations WHERE id = $1", conv) == "queued"
    now = opened + timedelta(minutes=7)
    sent = await send_agent_reply(db, sender, conv, "Hi! Which video is this about?", agent="asha", now=now)
    assert sent.first_response and sent.wamid.startswith("wamid.")
    assert await sandbox_texts(sandbox, phone) == ["Hi! Which video is this about?"]
    row = await db.fetchrow("SELECT * FROM inbox_conversations WHERE id = $1", conv)
    assert (row["first_human_reply_at"], row["status"]) == (now, "assigned")  # the replying agent took it
    reply = await db.fetchrow("SELECT state, wamid, author FROM inbox_replies WHERE conversation_id = $1", conv)
    assert tuple(reply) == ("sent", sent.wamid, "agent")
    later = await send_agent_reply(db, sender, conv, "Thanks, fixed.", now=now + timedelta(minutes=1))
    assert not later.first_response and later.agent == "asha"  # defaults to the assigned agent
    assert await db.fetchval("SELECT first_human_reply_at FROM inbox_conversations WHERE id = $1", conv) == now


async def test_reply_outside_the_window_is_refused_before_sending(db: Database, uniq: str, phone_factory,
                                                                  sandbox: object, sender: CloudApiSender) -> None:
    env = await make_env(db, uniq)
    phone = phone_factory()
    await add_contact(db, env, phone)
    conv = await _open_conversation(db, env, phone, T0)
    expected = (rf"^conversation {conv}: the 24 h customer-service window with \*{{8}}{phone[-4:]} closed at "
                r"2026-12-02 10:00 UTC; free-form replies are allowed only inside it\. Send an approved template")
    with pytest.raises(WindowClosed, match=expected):
        await send_agent_reply(db, sender, conv, "sorry for the delay", now=T0 + timedelta(hours=25))
    assert await sandbox_texts(sandbox, phone) == []
    assert await db.fetchval("SELECT count(*) FROM inbox_replies WHERE conversation_id = $1", conv) == 0


async def test_131047_from_the_api_is_the_same_clear_error(db: Database, uniq: str, phone_factory,
                                                           sandbox: object, sender: CloudApiSender) -> None:
    env = await make_env(db, uniq)
    phone = phone_factory()
    await add_contact(db, env, phone)
    now = datetime.now(UTC)
    conv = await _open_conversation(db, env, phone, now - timedelta(minutes=1))
    base = sandbox.base_url.rsplit("/", 1)[0]  # type: ignore[attr-defined]
    async with httpx.AsyncClient() as client:
        await client.post(f"{base}/_sandbox/faults", json={"error_rate": {"131047": 1.0}})
        try:
            with pytest.raises(WindowClosed, match=rf"^conversation {conv}: the Cloud API refused the reply with "
                                                   r"131047 \(more than 24 h since the contact's last message\)"):
                await send_agent_reply(db, sender, conv, "hello?", now=now)
        finally:
            await client.post(f"{base}/_sandbox/faults", json={})
    reply = await db.fetchrow("SELECT state, error_code FROM inbox_replies WHERE conversation_id = $1", conv)
    assert tuple(reply) == ("failed", 131047)


async def test_a_131047_status_webhook_for_a_sent_reply_marks_it_failed(
        db: Database, uniq: str, phone_factory, sandbox: object, sender: CloudApiSender) -> None:
    """The API accepted the reply, then WhatsApp failed it by webhook: the reply row says so."""
    env = await make_env(db, uniq)
    phone = phone_factory()
    await add_contact(db, env, phone)
    now = datetime.now(UTC)
    conv = await _open_conversation(db, env, phone, now - timedelta(minutes=1))
    sent = await send_agent_reply(db, sender, conv, "hello?", now=now)
    ts = int(now.timestamp())
    async with running_receiver(db, hooks=Hooks()) as rx:
        for doc in (envelope([change([status(sent.wamid, "sent", ts, recipient=phone)])]),
                    envelope([change([status(sent.wamid, "failed", ts + 1, recipient=phone, code=131047)])]),
                    envelope([change([status(sent.wamid, "delivered", ts + 2, recipient=phone)])])):
            assert (await rx.post(doc)).status_code == 200
            await rx.applied()
    reply = await db.fetchrow("SELECT state, error_code, error FROM inbox_replies WHERE id = $1", sent.reply_id)
    assert (reply["state"], reply["error_code"]) == ("failed", 131047)
    assert "131047" in reply["error"]
    assert await db.fetchval("SELECT count(*) FROM status_pending WHERE wamid = $1", sent.wamid) == 0


async def test_resolved_conversation_takes_no_reply(db: Database, uniq: str, phone_factory,
                                                    sender: CloudApiSender) -> None:
    env = await make_env(db, uniq)
    phone = phone_factory()
    await add_contact(db, env, phone)
    conv = await _open_conversation(db, env, phone, datetime.now(UTC))
    await resolve_conversation(db, conv)
    with pytest.raises(StateError, match=rf"^conversation {conv} is resolved; the contact's next message opens"):
        await send_agent_reply(db, sender, conv, "one more thing")
    with pytest.raises(StateError, match=rf"^conversation {conv} is already resolved"):
        await resolve_conversation(db, conv)


async def test_bot_outbox_sends_answers_inside_the_window_and_expires_the_rest(
        db: Database, uniq: str, phone_factory, sandbox: object, sender: CloudApiSender) -> None:
    env = await make_env(db, uniq)
    fresh, stale = phone_factory(), phone_factory()
    await add_contact(db, env, fresh, language="hi")
    await add_contact(db, env, stale, language="en")
    [a] = await env.inbox.handle_messages(db, value_for(env, fresh, text("रोकें"), at=datetime.now(UTC)))
    [b] = await env.inbox.handle_messages(db, value_for(env, stale, text("how to get more views"), at=T0))
    await send_due_bot_replies(db, sender)
    assert await sandbox_texts(sandbox, fresh) == [
        "ठीक है: अब आपको हमारे कैंपेन संदेश नहीं भेजे जाएंगे। फिर से जुड़ने के लिए START भेजें।"]
    assert await sandbox_texts(sandbox, stale) == []
    states = {r["conversation_id"]: (r["state"], r["wamid"] is not None) for r in await db.fetch(
        "SELECT conversation_id, state, wamid FROM inbox_replies WHERE conversation_id = ANY($1::bigint[])",
        [a.conversation_id, b.conversation_id])}
    assert states == {a.conversation_id: ("sent", True), b.conversation_id: ("expired", False)}
    await send_due_bot_replies(db, sender)
    assert len(await sandbox_texts(sandbox, fresh)) == 1  # a sent answer is never sent again
