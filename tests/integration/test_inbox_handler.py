"""Inbound messages against real Postgres: stored once, consent, FAQ, escalation, campaign links.

Each test owns a workspace and a sender number named with `uniq`; the helpers here are shared by
the other inbox integration tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import trio

from broadcaster.db import Database
from broadcaster.inbox.handler import Inbox, InboxConfig
from broadcaster.inbox.report import campaign_replies
from broadcaster.inbox.rules import load_rules

EXAMPLE_RULES = Path(__file__).resolve().parents[2] / "examples" / "rules.toml"
T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


# --------------------------------------------------------------------------- shared helpers


@dataclass
class Env:
    workspace: str
    number: str  # the business phone_number_id the test's contacts write to
    inbox: Inbox
    seq: int = 0

    def wamid(self) -> str:
        self.seq += 1
        return f"wamid.in.{self.number}.{self.seq}"


async def make_env(db: Database, uniq: str, *, workspace: str | None = None, number: str | None = None) -> Env:
    """A fresh workspace, a sender number mapped to it, and an Inbox with the example rules."""
    ws = workspace or f"ws_{uniq}"
    pn = number or f"pn{uniq}"
    await db.execute("INSERT INTO workspaces (name) VALUES ($1) ON CONFLICT DO NOTHING", ws)
    await db.execute("INSERT INTO sender_numbers (phone_number_id, workspace) VALUES ($1, $2)", pn, ws)
    return Env(ws, pn, Inbox(InboxConfig(), rules=load_rules(EXAMPLE_RULES)))


async def add_contact(db: Database, env: Env, wa_id: str, *, genre: str | None = "entertainment",
                      language: str | None = "hi", opted_in: bool = True, name: str | None = None) -> int:
    return await db.fetchval(
        """INSERT INTO contacts (workspace, wa_id, name, genre, language, marketing_opt_in, consent_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id""",
        env.workspace, wa_id, name or f"Creator {wa_id[-4:]}", genre, language, opted_in, T0 - timedelta(days=30))


def value_for(env: Env, wa_id: str, message: dict[str, Any], *, wamid: str | None = None,
              at: datetime = T0, name: str = "Asha") -> dict[str, Any]:
    """One §4.5 change value carrying one message."""
    msg = {"from": wa_id, "id": wamid or env.wamid(), "timestamp": str(int(at.timestamp())), **message}
    return {"messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": env.number},
            "contacts": [{"profile": {"name": name}, "wa_id": wa_id}], "messages": [msg]}


def text(body: str) -> dict[str, Any]:
    return {"type": "text", "text": {"body": body}}


def button(payload: str, label: str, context_id: str | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "button", "button": {"payload": payload, "text": label}}
    if context_id:
        msg["context"] = {"from": "15550783881", "id": context_id}
    return msg


async def contact_row(db: Database, env: Env, wa_id: str) -> Any:
    return await db.fetchrow("SELECT * FROM contacts WHERE workspace = $1 AND wa_id = $2", env.workspace, wa_id)


async def bot_replies(db: Database, conversation_id: int) -> list[Any]:
    return await db.fetch("SELECT * FROM inbox_replies WHERE conversation_id = $1 AND author = 'bot' ORDER BY id",
                          conversation_id)


# --------------------------------------------------------------------------- consent


async def test_stop_forms_opt_out_with_one_confirmation_each(db: Database, uniq: str, phone_factory) -> None:
    env = await make_env(db, uniq)
    cases = [("STOP", "en"), ("stop ", "en"), ("Stop.", "en"), ("रोकें", "hi")]
    for body, language in cases:
        wa_id = phone_factory()
        await add_contact(db, env, wa_id, language=language)
        [out] = await env.inbox.handle_messages(db, value_for(env, wa_id, text(body)), now=T0 + timedelta(seconds=2))
        assert (out.action, out.rule_id, out.reply_queued) == ("opt_out", "opt_out", True), body
        contact = await contact_row(db, env, wa_id)
        assert contact["marketing_opt_in"] is False, body
        assert (contact["consent_source"], contact["consent_at"]) == ("reply", T0)
        [reply] = await bot_replies(db, out.conversation_id)
        assert reply["state"] == "queued" and reply["wa_id"] == wa_id
        assert reply["body"].startswith("ठीक है" if language == "hi" else "Done: you will not get"), body
        conv = await db.fetchrow("SELECT * FROM inbox_conversations WHERE id = $1", out.conversation_id)
        assert (conv["status"], conv["resolved_by"]) == ("resolved", "bot")  # a rule alone closed it
        assert conv["first_bot_reply_at"] == T0 + timedelta(seconds=2)


async def test_sentence_with_stop_escalates_and_keeps_consent(db: Database, uniq: str, phone_factory) -> None:
    env = await make_env(db, uniq)
    wa_id = phone_factory()
    await add_contact(db, env, wa_id, language="en")
    [out] = await env.inbox.handle_messages(db, value_for(env, wa_id, text("Please stop sending me so many messages")))
    assert (out.action, out.rule_id, out.escalated) == ("escalate", "consent_complaint", True)
    assert (await contact_row(db, env, wa_id))["marketing_opt_in"] is True
    esc = await db.fetchrow("SELECT * FROM inbox_escalations WHERE conversation_id = $1", out.conversation_id)
    assert esc["dedup_key"] == f"conversation:{out.conversation_id}" and esc["state"] == "pending"
    payload = orjson.loads(esc["payload"])
    assert "Please stop sending me so many messages" in payload["text"]
    assert wa_id not in esc["payload"] and wa_id[-4:] in payload["text"]  # masked phone only
    conv = await db.fetchrow("SELECT status FROM inbox_conversations WHERE id = $1", out.conversation_id)
    assert conv["status"] == "queued"  # no team set up in this workspace: it waits unrouted


async def test_start_opts_back_in(db: Database, uniq: str, phone_factory) -> None:
    env = await make_env(db, uniq)
    wa_id = phone_factory()
    await add_contact(db, env, wa_id, language="hi", opted_in=False)
    await env.inbox.handle_messages(db, value_for(env, wa_id, text("STOP"), at=T0))
    [out] = await env.inbox.handle_messages(db, value_for(env, wa_id, text("START"), at=T0 + timedelta(minutes=5)))
    assert out.action == "opt_in"
    contact = await contact_row(db, env, wa_id)
    assert contact["marketing_opt_in"] is True and contact["consent_at"] == T0 + timedelta(minutes=5)
    # an older STOP delivered late does not undo the newer START
    await env.inbox.handle_messages(db, value_for(env, wa_id, text("stop"), at=T0 + timedelta(minutes=1)))
    assert (await contact_row(db, env, wa_id))["marketing_opt_in"] is True


# --------------------------------------------------------------------------- FAQ


async def test_faq_answers_in_hindi_and_english_with_handbook_links(db: Database, uniq: str, phone_factory) -> None:
    env = await make_env(db, uniq)
    hi, en = phone_factory(), phone_factory()
    await add_contact(db, env, hi, language="hi")
    await add_contact(db, env, en, language="en")
    [a] = await env.inbox.handle_messages(db, value_for(env, hi, text("व्यूज कैसे बढ़ाएं?")))
    [b] = await env.inbox.handle_messages(db, value_for(env, en, text("How do I get paid? what is the payout")))
    assert (a.action, a.rule_id) == ("faq", "faq_views")
    assert (b.action, b.rule_id) == ("faq", "faq_monetisation")
    [ra] = await bot_replies(db, a.conversation_id)
    [rb] = await bot_replies(db, b.conversation_id)
    assert ra["body"] == "व्यूज़ बढ़ाने के आसान तरीके यहाँ पढ़ें: https://creators.example.in/handbook/views"
    assert rb["body"] == "How earnings and payouts work: https://creators.example.in/handbook/monetisation"
    assert ra["preview_url"] is True
    actions = await db.fetch("SELECT action, rule_id, language, rules_version FROM inbox_rule_actions "
                             "WHERE conversation_id = ANY($1::bigint[]) ORDER BY id",
                             [a.conversation_id, b.conversation_id])
    assert [tuple(r) for r in actions] == [("faq", "faq_views", "hi", 1), ("faq", "faq_monetisation", "en", 1)]


# --------------------------------------------------------------------------- idempotency


async def test_same_message_delivered_twice_is_stored_and_acted_on_once(db: Database, uniq: str,
                                                                        phone_factory) -> None:
    env = await make_env(db, uniq)
    wa_id = phone_factory()
    await add_contact(db, env, wa_id, language="en")
    stop = value_for(env, wa_id, text("STOP"))
    complaint = value_for(env, phone_factory(), text("this is spam, stop it"))
    first = await env.inbox.handle_messages(db, stop)
    again = await env.inbox.handle_messages(db, stop)
    assert [o.duplicate for o in first + again] == [False, True]
    # and twice at the same moment (Meta retries concurrently to every subscribed app)
    async with trio.open_nursery() as nursery:
        for _ in range(2):
            nursery.start_soon(env.inbox.handle_messages, db, complaint)
    for value in (stop, complaint):
        wamid = value["messages"][0]["id"]
        msg_id = await db.fetchval("SELECT id FROM inbox_messages WHERE wamid = $1", wamid)
        assert await db.fetchval("SELECT count(*) FROM inbox_messages WHERE wamid = $1", wamid) == 1
        assert await db.fetchval("SELECT count(*) FROM inbox_rule_actions WHERE message_id = $1", msg_id) == 1
    stop_conv = first[0].conversation_id
    assert len(await bot_replies(db, stop_conv)) == 1  # one confirmation
    complaint_conv = await db.fetchval("SELECT conversation_id FROM inbox_messages WHERE wamid = $1",
                                       complaint["messages"][0]["id"])
    assert await db.fetchval("SELECT count(*) FROM inbox_escalations WHERE conversation_id = $1", complaint_conv) == 1
    assert await db.fetchval("SELECT count(*) FROM inbox_conversations WHERE workspace = $1", env.workspace) == 2


# --------------------------------------------------------------------------- contacts, windows, campaigns


async def test_unknown_number_creates_an_unassigned_contact_without_consent(db: Database, uniq: str,
                                                                            phone_factory) -> None:
    env = await make_env(db, uniq)
    wa_id = phone_factory()
    [out] = await env.inbox.handle_messages(db, value_for(env, wa_id, text("hello, who is this?"), name="Ravi K"))
    contact = await contact_row(db, env, wa_id)
    assert (contact["status"], contact["name"], contact["marketing_opt_in"]) == ("unassigned", "Ravi K", False)
    assert out.action == "route"
    msg = await db.fetchrow("SELECT * FROM inbox_messages WHERE id = $1", out.message_id)
    assert (msg["contact_id"], msg["conversation_id"], msg["body"]) == (contact["id"], out.conversation_id,
                                                                      "hello, who is this?")


async def test_inbound_opens_the_window_at_the_latest_timestamp(db: Database, uniq: str, phone_factory) -> None:
    env = await make_env(db, uniq)
    wa_id = phone_factory()
    await add_contact(db, env, wa_id)
    later, earlier = T0 + timedelta(hours=3), T0
    await env.inbox.handle_messages(db, value_for(env, wa_id, text("hi"), at=later))
    await env.inbox.handle_messages(db, value_for(env, wa_id, text("hello?"), at=earlier))  # arrives late
    window = await db.fetchrow("SELECT * FROM inbox_service_windows WHERE phone_number_id = $1 AND wa_id = $2",
                               env.number, wa_id)
    assert window["last_inbound_at"] == later
    assert window["expires_at"] == later + timedelta(hours=24)


async def _broadcast(db: Database, env: Env, uniq: str, wa_id: str, contact_id: int) -> tuple[int, int, str]:
    """A campaign with one delivered ledger row for `wa_id`; returns (campaign id, ledger id, wamid)."""
    await db.execute("INSERT INTO segments (name, workspace, filter) VALUES ($1, $2, '{}')",
                     f"seg_{uniq}", env.workspace)
    campaign_id = await db.fetchval(
        """INSERT INTO campaigns (name, workspace, segment, template_name, default_language, state)
           VALUES ($1, $2, $3, 'daily_campaign_invite', 'hi', 'completed') RETURNING id""",
        f"camp_{uniq}", env.workspace, f"seg_{uniq}")
    wamid = f"wamid.out.{uniq}"
    ledger_id = await db.fetchval(
        """INSERT INTO ledger (campaign_id, contact_id, wa_id, language, state, wamid, phone_number_id, accepted_at)
           VALUES ($1, $2, $3, 'hi', 'delivered', $4, $5, $6) RETURNING id""",
        campaign_id, contact_id, wa_id, wamid, env.number, T0 - timedelta(hours=1))
    return campaign_id, ledger_id, wamid


async def test_button_tap_on_a_broadcast_links_campaign_and_escalates_unknown_payload(
        db: Database, uniq: str, phone_factory) -> None:
    env = await make_env(db, uniq)
    wa_id = phone_factory()
    contact_id = await add_contact(db, env, wa_id)
    campaign_id, ledger_id, wamid = await _broadcast(db, env, uniq, wa_id, contact_id)
    [out] = await env.inbox.handle_messages(db, value_for(env, wa_id, button("JOIN_MONSOON", "I'm in", wamid)))
    msg = await db.fetchrow("SELECT * FROM inbox_messages WHERE id = $1", out.message_id)
    assert (msg["type"], msg["payload"], msg["body"]) == ("button", "JOIN_MONSOON", "I'm in")
    assert (msg["context_wamid"], msg["campaign_id"], msg["ledger_id"]) == (wamid, campaign_id, ledger_id)
    assert await db.fetchval("SELECT campaign_id FROM inbox_conversations WHERE id = $1",
                             out.conversation_id) == campaign_id
    assert (out.action, out.escalated) == ("escalate", True)  # a payload no rule knows → a human + Slack
    payload = orjson.loads(await db.fetchval("SELECT payload FROM inbox_escalations WHERE conversation_id = $1",
                                             out.conversation_id))
    assert "button payload 'JOIN_MONSOON' matches no rule" in orjson.dumps(payload).decode()
    assert f"camp_{uniq}" in orjson.dumps(payload).decode()
    assert await campaign_replies(db, f"camp_{uniq}") == {
        "campaign": f"camp_{uniq}", "reached": 1, "replies": 1, "repliers": 1, "reply_rate": 1.0}


async def test_stop_promotions_button_opts_out(db: Database, uniq: str, phone_factory) -> None:
    env = await make_env(db, uniq)
    wa_id = phone_factory()
    await add_contact(db, env, wa_id, language="ta")
    [out] = await env.inbox.handle_messages(db, value_for(env, wa_id, button("STOP_PROMOTIONS", "Stop promotions")))
    assert out.action == "opt_out"
    assert (await contact_row(db, env, wa_id))["marketing_opt_in"] is False


async def test_reaction_is_stored_but_opens_nothing(db: Database, uniq: str, phone_factory) -> None:
    env = await make_env(db, uniq)
    wa_id = phone_factory()
    await add_contact(db, env, wa_id)
    reaction = {"type": "reaction", "reaction": {"message_id": "wamid.x", "emoji": "👍"}}
    [out] = await env.inbox.handle_messages(db, value_for(env, wa_id, reaction))
    assert (out.action, out.conversation_id) == ("ignore", None)
    assert await db.fetchval("SELECT payload FROM inbox_messages WHERE id = $1", out.message_id) == "👍"
    assert await db.fetchval("SELECT count(*) FROM inbox_conversations WHERE workspace = $1", env.workspace) == 0


async def test_media_is_stored_as_metadata_and_goes_to_a_human(db: Database, uniq: str, phone_factory) -> None:
    env = await make_env(db, uniq)
    wa_id = phone_factory()
    await add_contact(db, env, wa_id)
    image = {"type": "image", "image": {"id": "media-1", "mime_type": "image/jpeg", "sha256": "abc"}}
    [out] = await env.inbox.handle_messages(db, value_for(env, wa_id, image))
    assert out.action == "route"
    media = orjson.loads(await db.fetchval("SELECT media FROM inbox_messages WHERE id = $1", out.message_id))
    assert media == {"kind": "image", "id": "media-1", "mime_type": "image/jpeg", "sha256": "abc"}


async def test_two_workspaces_keep_their_contacts_apart(db: Database, uniq: str, phone_factory) -> None:
    a = await make_env(db, uniq, workspace=f"wsa_{uniq}", number=f"pna{uniq}")
    b = await make_env(db, uniq, workspace=f"wsb_{uniq}", number=f"pnb{uniq}")
    wa_id = phone_factory()
    await add_contact(db, a, wa_id, language="hi")
    await add_contact(db, b, wa_id, language="en")
    [oa] = await a.inbox.handle_messages(db, value_for(a, wa_id, text("hello")))
    [ob] = await b.inbox.handle_messages(db, value_for(b, wa_id, text("hello")))
    rows = await db.fetch("SELECT c.workspace, k.language FROM inbox_conversations c"
                          " JOIN contacts k ON k.id = c.contact_id"
                          " WHERE c.id = ANY($1::bigint[]) ORDER BY c.workspace",
                          [oa.conversation_id, ob.conversation_id])
    assert [tuple(r) for r in rows] == [(f"wsa_{uniq}", "hi"), (f"wsb_{uniq}", "en")]


async def test_typed_stop_finds_the_contact_the_number_sent_to_and_opts_out_every_workspace(
        db: Database, uniq: str, phone_factory) -> None:
    """One business number shared by two workspaces (registered to one of them): a STOP typed
    without quoting a broadcast reaches the contact that number last sent to, and no workspace
    keeps marketing to that person."""
    a = await make_env(db, uniq, workspace=f"wsa_{uniq}", number=f"pn{uniq}")
    b_ws = f"wsb_{uniq}"
    await db.execute("INSERT INTO workspaces (name) VALUES ($1)", b_ws)
    b = Env(b_ws, a.number, a.inbox)
    wa_id, other = phone_factory(), phone_factory()
    in_b = await add_contact(db, b, wa_id, language="bho")
    await _broadcast(db, b, uniq, wa_id, in_b)  # workspace B's campaign reached them from A's number
    in_a = await add_contact(db, a, other, language="hi")
    also_in_b = await add_contact(db, b, other, language="hi")

    [out] = await a.inbox.handle_messages(db, value_for(a, wa_id, text("STOP")))
    assert (out.action, out.workspace) == ("opt_out", b_ws)
    assert await db.fetchval("SELECT count(*) FROM contacts WHERE wa_id = $1", wa_id) == 1  # none made up
    assert (await contact_row(db, b, wa_id))["marketing_opt_in"] is False

    [out] = await a.inbox.handle_messages(db, value_for(a, other, text("बंद करो")))
    assert (out.action, out.workspace) == ("opt_out", a.workspace)  # never sent to: the number's own
    consent = await db.fetch("SELECT id, marketing_opt_in FROM contacts WHERE id = ANY($1::bigint[]) ORDER BY id",
                             [in_a, also_in_b])
    assert [r["marketing_opt_in"] for r in consent] == [False, False]

    [back] = await a.inbox.handle_messages(db, value_for(a, other, text("START"), at=T0 + timedelta(minutes=5)))
    assert back.action == "opt_in"
    consent = await db.fetch("SELECT id, marketing_opt_in FROM contacts WHERE id = ANY($1::bigint[]) ORDER BY id",
                             [in_a, also_in_b])
    assert [r["marketing_opt_in"] for r in consent] == [True, False]  # opt-in: only the contact that wrote
    history = await db.fetch("SELECT workspace, opted_in, source, detail FROM consent_events WHERE wa_id = $1"
                             " ORDER BY at, workspace", other)
    assert [(r["workspace"], r["opted_in"], r["source"]) for r in history] == [
        (a.workspace, False, "reply"), (b_ws, False, "reply"), (a.workspace, True, "reply")]
    assert history[0]["detail"].startswith("opt_out (wamid.in.")


async def test_a_first_message_to_a_workspaces_number_stays_in_that_workspace(
        db: Database, uniq: str, phone_factory) -> None:
    """Known in workspace A only, never messaged by B's number: writing to B's number opens B's
    conversation (B's teams, a new contact in B), not A's."""
    a = await make_env(db, uniq, workspace=f"wsa_{uniq}", number=f"pna{uniq}")
    b = await make_env(db, uniq, workspace=f"wsb_{uniq}", number=f"pnb{uniq}")
    wa_id = phone_factory()
    await add_contact(db, a, wa_id)
    [out] = await b.inbox.handle_messages(db, value_for(b, wa_id, text("hello")))
    assert out.workspace == b.workspace
    assert (await contact_row(db, b, wa_id))["status"] == "unassigned"
