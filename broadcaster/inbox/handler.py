"""Inbound messages → stored once, attached to contact and conversation, rules applied, routed.

`handle_messages(db, value)` is what the webhook receiver calls for every authentic change
`value` that has `messages[]`. Meta delivers at least once, so it is called again for the same
payload; each message is handled in its own transaction that starts with an atomic insert keyed
on the message id (`inbox_messages.wamid` UNIQUE):

    resolve workspace (quoted broadcast → the contact this number last sent to → the number's
        workspace → a known contact with that number → default)
    → upsert the contact (unknown numbers: status 'unassigned', no marketing consent)
    → INSERT the message ON CONFLICT DO NOTHING   ── already there: roll back, nothing else happens
    → open/refresh the 24 h service window (max timestamp + 24 h)
    → open or join the contact's conversation (a resolved one is not reopened: a new one starts)
    → evaluate the rules (first match wins) and apply the decision:
         opt_out / opt_in   consent updated (an opt-out: the number in every workspace), one
                            confirmation queued
         faq                handbook answer queued
         escalate           routed to a human + one Slack escalation queued per conversation
         route              routed to the team's queue / an agent
         ignore             reactions, system messages: stored only
    → one row in inbox_rule_actions

So the same message delivered twice gives one stored message, one rule action, one reply, one
escalation. Replies and Slack posts are sent by the inbox worker (worker.py), never here: this
path only writes Postgres.

Cancellation: a message's transaction is rolled back when cancelled; the receiver's retry (or the
stored raw event) handles it again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from broadcaster.db import Connection, Database
from broadcaster.inbox import routing
from broadcaster.inbox.messages import InboundMessage, MalformedMessage, parse_message
from broadcaster.inbox.rules import Decision, Incoming, RuleSet, RulesFile, evaluate
from broadcaster.inbox.slack import escalation_message
from broadcaster.inbox.worker import nudge
from broadcaster.logs import mask_phone
from broadcaster.metrics import record_auto_answer, record_escalation, record_inbound_message
from segments.canon import canonical_language

__all__ = [
    "ENV_RULES", "ENV_WORKSPACE", "Inbox", "InboxConfig", "Outcome", "default_inbox", "escalate_in",
    "handle_messages", "set_default_inbox",
]

logger = logging.getLogger(__name__)

ENV_RULES = "BROADCASTER_INBOX_RULES"  # path of the rules file
ENV_WORKSPACE = "BROADCASTER_INBOX_WORKSPACE"  # workspace for numbers nothing else places
WINDOW_S = 24 * 3600  # the customer-service window (§3.5)
FALLBACK_WORKSPACE = "unrouted"  # created on demand when no workspace can be found at all
EMPTY_RULES = RuleSet(version=0, default_language="en", rules=(), source="<no rules file>")


@dataclass(frozen=True)
class InboxConfig:
    rules_path: Path | None = None       # BROADCASTER_INBOX_RULES; else ./rules.toml if present
    default_workspace: str | None = None  # BROADCASTER_INBOX_WORKSPACE
    window_s: float = WINDOW_S

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> InboxConfig:
        env = os.environ if env is None else env
        rules = env.get(ENV_RULES, "").strip()
        path = Path(rules) if rules else (Path("rules.toml") if Path("rules.toml").is_file() else None)
        return cls(rules_path=path, default_workspace=env.get(ENV_WORKSPACE, "").strip() or None)


@dataclass(frozen=True)
class Outcome:
    """What happened to one inbound message (for logs and tests)."""

    wamid: str
    duplicate: bool
    message_id: int | None = None
    conversation_id: int | None = None
    action: str | None = None
    rule_id: str | None = None
    assignment: routing.Assignment | None = None
    escalated: bool = False
    reply_queued: bool = False
    workspace: str | None = None
    team: str | None = None  # the conversation's team name, for metrics and logs


class _Duplicate(Exception):  # noqa: N818 - control flow: roll the transaction back
    pass


def _json(obj: object) -> str:
    return orjson.dumps(obj).decode()


class Inbox:
    """The companion's inbound side: a rules source plus settings.

    Raises (construction): RulesError when the configured rules file is missing or invalid, so a
    misconfigured `inbound serve` fails at start, not on the first message.
    """

    def __init__(self, config: InboxConfig | None = None, *, rules: RuleSet | RulesFile | None = None) -> None:
        self.config = config or InboxConfig()
        if rules is None and self.config.rules_path is not None:
            rules = RulesFile(self.config.rules_path)
        if isinstance(rules, RulesFile):
            rules.current()
        elif rules is None:
            logger.warning("no inbox rules file (set %s): no opt-out keywords, FAQ or escalation rules; "
                           "every message goes to a human", ENV_RULES)
        self._rules = rules

    def rules(self) -> RuleSet:
        if isinstance(self._rules, RulesFile):
            return self._rules.current()
        return self._rules if self._rules is not None else EMPTY_RULES

    async def handle_messages(self, db: Database, value: Mapping[str, Any], *,
                              now: datetime | None = None) -> list[Outcome]:
        """Handle every `value.messages[]` item (each in its own transaction). Idempotent."""
        messages = value.get("messages")
        if not isinstance(messages, list):
            return []
        contacts = value.get("contacts") if isinstance(value.get("contacts"), list) else []
        metadata = value.get("metadata") if isinstance(value.get("metadata"), dict) else {}
        outcomes = []
        for raw in messages:
            at = now or datetime.now(UTC)
            try:
                msg = parse_message(raw if isinstance(raw, dict) else {}, contacts, metadata, at)
            except MalformedMessage as exc:
                logger.error("inbound message skipped: %s", exc)
                continue
            outcomes.append(await self.handle_one(db, msg, raw, at))
        if any(o.reply_queued or o.escalated for o in outcomes):
            nudge()
        return outcomes

    async def handle_one(self, db: Database, msg: InboundMessage, raw: object, now: datetime) -> Outcome:
        """One message, one transaction (see the module docstring)."""
        rules = self.rules()
        try:
            async with db.transaction() as conn:
                outcome = await self._apply(conn, msg, raw, rules, now)
        except _Duplicate:
            logger.info("inbound %s from %s: duplicate delivery, ignored", msg.wamid, mask_phone(msg.wa_id))
            return Outcome(msg.wamid, duplicate=True)
        # metrics only after the commit: a rolled-back attempt is retried and must not count twice
        record_inbound_message(outcome.workspace or "unknown")
        if outcome.action == "faq":
            record_auto_answer(outcome.team or "unrouted")
        if outcome.escalated:
            record_escalation(outcome.team or "unrouted")
        logger.info("inbound %s from %s: %s (rule %s), conversation %s", msg.wamid, mask_phone(msg.wa_id),
                    outcome.action, outcome.rule_id or "-", outcome.conversation_id)
        return outcome

    # ----- the transaction

    async def _workspace(self, conn: Connection, msg: InboundMessage) -> str:
        workspace = await conn.fetchval(
            """SELECT coalesce(
                   (SELECT c.workspace FROM contacts c
                      JOIN LATERAL (SELECT max(l.accepted_at) AS last FROM ledger l
                                     WHERE l.contact_id = c.id AND l.accepted_at IS NOT NULL
                                       AND l.phone_number_id = $1) m ON m.last IS NOT NULL
                     WHERE c.wa_id = $2
                     ORDER BY m.last DESC, c.id DESC
                     LIMIT 1),
                   (SELECT workspace FROM sender_numbers WHERE phone_number_id = $1),
                   (SELECT workspace FROM contacts WHERE wa_id = $2 ORDER BY updated_at DESC, id DESC LIMIT 1),
                   (SELECT name FROM workspaces WHERE name = $3),
                   (SELECT min(name) FROM workspaces HAVING count(*) = 1))""",
            msg.phone_number_id, msg.wa_id, self.config.default_workspace)
        if workspace is None:
            workspace = self.config.default_workspace or FALLBACK_WORKSPACE
            await conn.execute("INSERT INTO workspaces (name) VALUES ($1) ON CONFLICT DO NOTHING", workspace)
            logger.warning("inbound %s: number %s is in no workspace; filed under %r (set %s or register the "
                           "sender number)", msg.wamid, msg.phone_number_id, workspace, ENV_WORKSPACE)
        return workspace

    async def _apply(self, conn: Connection, msg: InboundMessage, raw: object, rules: RuleSet,
                     now: datetime) -> Outcome:
        link = None
        if msg.context_wamid:
            link = await conn.fetchrow(
                """SELECT l.id, l.campaign_id, l.contact_id, c.workspace, c.name
                     FROM ledger l JOIN campaigns c ON c.id = l.campaign_id WHERE l.wamid = $1""",
                msg.context_wamid)
        if link is not None:
            workspace = link["workspace"]
            contact = await conn.fetchrow(
                "SELECT id, name, genre, language, status, wa_id FROM contacts WHERE id = $1", link["contact_id"])
        else:
            workspace = await self._workspace(conn, msg)
            contact = await conn.fetchrow(
                """INSERT INTO contacts (workspace, wa_id, name, status, marketing_opt_in, consent_source, consent_at)
                   VALUES ($1, $2, $3, 'unassigned', false, 'inbound', $4)
                   ON CONFLICT (workspace, wa_id) DO UPDATE SET name = coalesce(contacts.name, EXCLUDED.name)
                   RETURNING id, name, genre, language, status, wa_id""",
                workspace, msg.wa_id, msg.profile_name, msg.sent_at)
        message_id = await conn.fetchval(
            """INSERT INTO inbox_messages (wamid, workspace, contact_id, phone_number_id, wa_id, user_id, type, body,
                                           payload, media, context_wamid, campaign_id, ledger_id, sent_at,
                                           received_at, raw)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11, $12, $13, $14, $15, $16::jsonb)
               ON CONFLICT (wamid) DO NOTHING RETURNING id""",
            msg.wamid, workspace, contact["id"], msg.phone_number_id, msg.wa_id, msg.user_id, msg.type, msg.body,
            msg.payload, None if msg.media is None else _json(msg.media), msg.context_wamid,
            link["campaign_id"] if link else None, link["id"] if link else None, msg.sent_at, now, _json(raw))
        if message_id is None:
            raise _Duplicate
        await conn.execute(
            """INSERT INTO inbox_service_windows (phone_number_id, wa_id, contact_id, last_inbound_at, expires_at)
               VALUES ($1, $2, $3, $4::timestamptz, $4::timestamptz + make_interval(secs => $5::float8))
               ON CONFLICT (phone_number_id, wa_id) DO UPDATE
                  SET contact_id = EXCLUDED.contact_id,
                      last_inbound_at = greatest(inbox_service_windows.last_inbound_at, EXCLUDED.last_inbound_at),
                      expires_at = greatest(inbox_service_windows.expires_at, EXCLUDED.expires_at)""",
            msg.phone_number_id or "", contact["wa_id"], contact["id"], msg.sent_at, self.config.window_s)

        language = canonical_language(contact["language"])[0]
        decision = evaluate(rules, Incoming(msg.type, msg.body, msg.payload, language))
        if decision.action == "ignore":
            conv_id = await conn.fetchval(
                """SELECT id FROM inbox_conversations WHERE contact_id = $1
                    ORDER BY (status <> 'resolved') DESC, id DESC LIMIT 1""", contact["id"])
            conv = None
        else:
            team_id, _ = await routing.team_for(conn, workspace, contact["genre"], contact["language"])
            conv = await conn.fetchrow(
                """INSERT INTO inbox_conversations (workspace, contact_id, phone_number_id, team_id, campaign_id,
                                                    first_inbound_at, last_inbound_at, reopens)
                   VALUES ($1, $2, $3, $4, $5, $6, $6,
                           (SELECT max(id) FROM inbox_conversations WHERE contact_id = $2 AND status = 'resolved'))
                   ON CONFLICT (contact_id) WHERE status <> 'resolved' DO UPDATE
                      SET first_inbound_at = least(inbox_conversations.first_inbound_at, EXCLUDED.first_inbound_at),
                          last_inbound_at = greatest(inbox_conversations.last_inbound_at, EXCLUDED.last_inbound_at),
                          phone_number_id = coalesce(EXCLUDED.phone_number_id, inbox_conversations.phone_number_id),
                          campaign_id = coalesce(inbox_conversations.campaign_id, EXCLUDED.campaign_id),
                          updated_at = now()
                   RETURNING id, status, team_id""",
                workspace, contact["id"], msg.phone_number_id, team_id, link["campaign_id"] if link else None,
                msg.sent_at)
            conv_id = conv["id"]
        if conv_id is not None:
            await conn.execute("UPDATE inbox_messages SET conversation_id = $2 WHERE id = $1", message_id, conv_id)

        outcome = Outcome(msg.wamid, duplicate=False, message_id=message_id, conversation_id=conv_id,
                          action=decision.action, rule_id=decision.rule_id, workspace=workspace)
        if conv is not None:
            outcome = await self._act(conn, decision, outcome, msg, contact, workspace, conv, link, now)
        await conn.execute(
            """INSERT INTO inbox_rule_actions (message_id, conversation_id, rules_version, rule_id, action,
                                               language, detail)
               VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)""",
            message_id, conv_id, rules.version, decision.rule_id, decision.action, language,
            _json({"reason": decision.reason, "topic": decision.topic,
                   "team_id": outcome.assignment.team_id if outcome.assignment else None,
                   "agent_id": outcome.assignment.agent_id if outcome.assignment else None,
                   "escalated": outcome.escalated, "reply_queued": outcome.reply_queued}))
        return outcome

    async def _act(self, conn: Connection, decision: Decision, outcome: Outcome, msg: InboundMessage,
                   contact: Any, workspace: str, conv: Any, link: Any, now: datetime) -> Outcome:
        conv_id = conv["id"]
        if decision.action in ("opt_out", "opt_in"):
            # A reply-made consent change only moves forward in message time (webhooks are unordered).
            # An opt-out covers the number in every workspace (the person stopped marketing from us,
            # whichever list they are on); an opt-in only the contact that wrote.
            await conn.execute(
                """WITH changed AS (
                       UPDATE contacts SET marketing_opt_in = $2, consent_source = 'reply', consent_at = $3,
                              updated_at = now()
                        WHERE (id = $1 OR ($2 = false AND wa_id = $4))
                          AND (consent_source <> 'reply' OR consent_at <= $3)
                       RETURNING workspace, wa_id)
                   INSERT INTO consent_events (workspace, wa_id, opted_in, source, detail, at)
                   SELECT workspace, wa_id, $2, 'reply', $5, $3 FROM changed""",
                contact["id"], decision.action == "opt_in", msg.sent_at, contact["wa_id"],
                f"{decision.rule_id} ({msg.wamid[:200]})")
        reply_queued = False
        if decision.reply is not None:
            reply_queued = await conn.fetchval(
                """INSERT INTO inbox_replies (conversation_id, source_message_id, author, rule_id, phone_number_id,
                                              wa_id, body, preview_url, created_at)
                   VALUES ($1, $2, 'bot', $3, $4, $5, $6, $7, $8)
                   ON CONFLICT (source_message_id) DO NOTHING RETURNING true""",
                conv_id, outcome.message_id, decision.rule_id, msg.phone_number_id, contact["wa_id"],
                decision.reply, decision.link is not None, now) or False
            if reply_queued:
                await conn.execute(
                    """UPDATE inbox_conversations SET first_bot_reply_at = coalesce(first_bot_reply_at, $2)
                        WHERE id = $1""", conv_id, now)
        assignment = None
        escalated = False
        if decision.needs_human:
            assignment = await routing.route_conversation(conn, conv_id, workspace, contact["genre"],
                                                          contact["language"], now)
        elif conv["status"] == "bot":
            # answered by a rule and nobody else involved: the conversation is done
            await conn.execute(
                """UPDATE inbox_conversations SET status = 'resolved', resolved_at = $2, resolved_by = 'bot',
                          updated_at = now() WHERE id = $1""", conv_id, now)
        team = None
        team_id = assignment.team_id if assignment else conv["team_id"]
        if team_id is not None:
            team = await conn.fetchval("SELECT name FROM inbox_teams WHERE id = $1", team_id)
        if decision.action == "escalate":
            escalated = await escalate_in(
                conn, conv_id, reason=decision.reason, workspace=workspace, team=team, contact=contact,
                text=msg.body or msg.payload, campaign=link["name"] if link else None)
        return Outcome(outcome.wamid, False, outcome.message_id, conv_id, decision.action, decision.rule_id,
                       assignment, escalated, reply_queued, workspace, team)


async def escalate_in(conn: Connection, conversation_id: int, *, reason: str, workspace: str, team: str | None,
                      contact: Any, text: str | None, campaign: str | None = None) -> bool:
    """Queue the conversation's Slack escalation (once per conversation); True if queued now.

    Runs in the caller's transaction; the caller counts the metric after its commit.
    """
    payload = escalation_message(
        conversation_id=conversation_id, workspace=workspace, team=team, contact_name=contact["name"],
        wa_id=contact["wa_id"], genre=contact["genre"], language=contact["language"], text=text,
        reason=reason, campaign=campaign)
    queued = await conn.fetchval(
        """INSERT INTO inbox_escalations (conversation_id, dedup_key, reason, payload)
           VALUES ($1, $2, $3, $4::jsonb) ON CONFLICT (dedup_key) DO NOTHING RETURNING true""",
        conversation_id, f"conversation:{conversation_id}", reason, _json(payload))
    return bool(queued)


# --------------------------------------------------------------------------- module-level entry

_default: Inbox | None = None


def default_inbox() -> Inbox:
    """The process's Inbox, built from the environment on first use (see InboxConfig.from_env)."""
    global _default
    if _default is None:
        _default = Inbox(InboxConfig.from_env())
    return _default


def set_default_inbox(inbox: Inbox | None) -> None:
    """Use `inbox` for `handle_messages` (e.g. built by `inbound serve` from its options)."""
    global _default
    _default = inbox


async def handle_messages(db: Database, value: dict) -> None:
    """The webhook receiver's entry point: handle `value.messages[]` with the default Inbox.

    Idempotent: calling it again with the same payload changes nothing.
    """
    await default_inbox().handle_messages(db, value)
