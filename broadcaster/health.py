"""Messaging health: WhatsApp's quality signals acted on, and guards that pause a campaign before
a burst of opt-outs or failures costs the number its quality rating.

    webhook receiver ─▶ handle_change(db, field, value)          (the apply worker's change hook)
        message_template_status_update   registry status; PAUSED → running campaigns on that
                                         (name, language) paused `template_paused`, DISABLED (or any
                                         other unsendable status) → `template_disabled`; APPROVED /
                                         REINSTATED → `template_paused` campaigns resume after
                                         pre-flight passes again
        message_template_quality_update  registry quality (GREEN / YELLOW / RED)
        phone_number_quality_update,     the number's quality, tier and rate (QUALITY_RATE below)
        account_update, business_capability_update
    CampaignRunner ─▶ GuardMonitor.check(ids) every CHECK_INTERVAL_S (one query) ─▶ trips paused
        optout_spike   (STOP replies + 131050 failures) / attempts over the window > optout_share
        failure_spike  failed sends (any code) / attempts over the window > failure_share
      each with at least `min_sample` attempts in the window; per-workspace thresholds
      (`workspace_guards`, defaults DEFAULT_GUARDS); a trip pauses the campaign and queues one Slack
      post in the same transaction (`health_alerts`), posted right away when SLACK_WEBHOOK_URL is set.
    run_alert_sender(db, slack)  posts what is still queued: template pauses decided in the webhook
      process, posts that failed (run it in a long-running process that has SLACK_WEBHOOK_URL).

Rules, written down once:
- attempts in the window = rows accepted by WhatsApp in it + rows that failed in it without ever
  being accepted. The window is the last `window_s`, and never reaches back before a manager's
  `campaign resume --force` (campaigns.guards_since): an overridden guard counts fresh events only.
- rate by quality (QUALITY_RATE): GREEN / UNKNOWN → the configured ceiling, YELLOW → 75 %,
  RED → 50 % (at least 1 msg/s). The configured ceiling is kept in sender_numbers.mps_ceiling
  while the number is held lower, and restored when quality is GREEN again. A FLAGGED event counts
  as RED, UNFLAGGED as GREEN. Running workers re-read sender_numbers every few seconds.
- a number webhook names the number by its display number (`health number ID --display DIGITS`);
  with a single sender number configured there is no doubt. A business_capability_update is the
  business portfolio's limit: it sets the tier of every sender number (one portfolio per deployment).
- webhooks carry no order (API doc §4.7): the last one handled wins.

    run_template_recheck(db, settings)  while a campaign waits on a paused template, re-reads the
      templates from the Graph API every TEMPLATE_RECHECK_S and resumes what is APPROVED again: a
      pause that ends without an APPROVED webhook (a missed or dropped delivery) still ends.
      `broadcaster templates sync` does the same once.

What this is not: an alert is posted at least once, not exactly once (a Slack POST that timed out
after Slack took it is posted again).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import httpx
import orjson
import trio

from broadcaster import metrics
from broadcaster.campaigns import GUARD_REASONS, compile_for, get_campaign_by_id
from broadcaster.config import Settings
from broadcaster.db import Connection, Database
from broadcaster.errors import BroadcasterError, DatabaseError, NotFoundError, UsageError
from broadcaster.inbox.slack import SlackConfig, SlackRejected, SlackUnavailable, post_escalation
from broadcaster.logs import mask_phone
from broadcaster.template_store import sync_templates

__all__ = [
    "CHECK_INTERVAL_S", "DEFAULT_GUARDS", "GUARD_REASONS", "QUALITY_RATE", "GuardConfig", "GuardMonitor",
    "GuardTrip", "HealthError", "NumberChange", "TemplateChange", "WindowCounts", "check_guards",
    "describe_pause", "enforce", "evaluate", "get_guards", "guard_alert", "handle_change",
    "list_numbers_health", "mps_for_quality", "parse_number_change", "parse_template_change",
    "run_alert_sender", "send_due_alerts", "set_display_number", "set_guards",
]

logger = logging.getLogger(__name__)

CHECK_INTERVAL_S = 5.0  # a worker evaluates the guards at most this often …
CHECK_BUDGET = 0.05  # … and spends at most this share of its time on it (large windows at 1,000 msg/s)
ALERT_INLINE_S = 5.0  # a trip's Slack post is tried right away for at most this long (the claim cycle waits)
ALERT_SWEEP_S = 10.0  # run_alert_sender looks for due alerts this often
TOP_CODES = 5  # failure codes shown in a failure_spike's detail, the most frequent first
OPTOUT_CODE = 131050  # "user stopped marketing messages from this business"
TEMPLATE_HALT_CODES = (132015, 132016)  # the circuit breaker's pauses that a template webhook explains

QUALITY_RATE: dict[str, float] = {"GREEN": 1.0, "UNKNOWN": 1.0, "YELLOW": 0.75, "RED": 0.5}
_QUALITY_WORDS = {"HIGH": "GREEN", "MEDIUM": "YELLOW", "LOW": "RED", "FLAGGED": "RED", "UNFLAGGED": "GREEN"}
_TIERS: dict[str, int | None] = {
    "TIER_50": 50, "TIER_250": 250, "TIER_1K": 1000, "TIER_2K": 2000, "TIER_10K": 10_000,
    "TIER_100K": 100_000, "TIER_UNLIMITED": None, "UNLIMITED": None,
}
# template statuses a webhook may set (API doc §5); REINSTATED means APPROVED again
_TEMPLATE_STATUSES = frozenset({
    "APPROVED", "PAUSED", "DISABLED", "REJECTED", "PENDING", "IN_APPEAL", "PENDING_DELETION", "DELETED",
    "LIMIT_EXCEEDED", "ARCHIVED", "LOCKED"})
_STATUS_ALIASES = {"REINSTATED": "APPROVED"}
_QUALITY_SCORES = frozenset({"GREEN", "YELLOW", "RED", "UNKNOWN"})
_NUMBER_FIELDS = frozenset({"phone_number_quality_update", "account_update", "business_capability_update"})
_KEEP = object()  # "no tier in this change"


class HealthError(BroadcasterError):
    """A health webhook cannot be applied as it is; the message names the field and the fix."""


# ============================================================================ pure: guards


@dataclass(frozen=True)
class GuardConfig:
    """One workspace's thresholds. A share of None turns that guard off."""

    optout_share: float | None = 0.02
    failure_share: float | None = 0.20
    window_s: int = 600
    min_sample: int = 200

    def __post_init__(self) -> None:
        for name in ("optout_share", "failure_share"):
            share = getattr(self, name)
            if share is not None and not 0 < share <= 1:
                raise UsageError(f"--{name.replace('_', '-')} {share}: must be a share in (0, 1], "
                                 "e.g. 0.02 for 2 %, or 'off'")
        if not 10 <= self.window_s <= 86_400:
            raise UsageError(f"--window-min {self.window_s / 60:g}: the window must be 10 s to 24 h")
        if self.min_sample < 1:
            raise UsageError(f"--min-sample {self.min_sample}: must be at least 1")


DEFAULT_GUARDS = GuardConfig()


@dataclass(frozen=True)
class WindowCounts:
    """What one campaign did inside its guard window (one row of the check query)."""

    accepted: int = 0  # rows accepted by WhatsApp
    sync_failed: int = 0  # rows that failed without ever being accepted
    failed: int = 0  # rows failed (any code, at send time or by webhook)
    failed_optout: int = 0  # of those, 131050
    stop_replies: int = 0  # contacts whose reply to the campaign was an opt-out (STOP)
    codes: Mapping[str, int] = field(default_factory=dict)  # failures by code, the largest few

    @property
    def attempts(self) -> int:
        return self.accepted + self.sync_failed

    @property
    def optouts(self) -> int:
        return self.stop_replies + self.failed_optout


def evaluate(counts: WindowCounts, config: GuardConfig) -> tuple[str, dict[str, Any]] | None:
    """The guard that trips on `counts`, with the numbers that tripped it, or None.

    A guard trips when attempts >= min_sample and its share is strictly over its threshold; the
    opt-out guard is looked at first (it is the one that costs quality).
    """
    attempts = counts.attempts
    if attempts < config.min_sample or attempts == 0:
        return None
    base = {"attempts": attempts, "window_min": round(config.window_s / 60, 2), "min_sample": config.min_sample}
    optout_share = counts.optouts / attempts
    if config.optout_share is not None and optout_share > config.optout_share:
        return "optout_spike", {**base, "opt_outs": counts.optouts, "stop_replies": counts.stop_replies,
                                "failed_131050": counts.failed_optout, "share": round(optout_share, 4),
                                "threshold": config.optout_share}
    failure_share = counts.failed / attempts
    if config.failure_share is not None and failure_share > config.failure_share:
        return "failure_spike", {**base, "failed": counts.failed, "share": round(failure_share, 4),
                                 "threshold": config.failure_share, "codes": dict(counts.codes)}
    return None


@dataclass(frozen=True)
class GuardTrip:
    campaign_id: int
    campaign: str
    workspace: str
    guard: str  # optout_spike | failure_spike
    detail: dict[str, Any]  # what campaign status shows: the numbers that tripped it, since, at


def describe_pause(reason: str | None, detail: Mapping[str, Any] | None, campaign: str = "NAME") -> str | None:
    """One line for `campaign status` saying why a campaign is paused, from its pause_detail."""
    if not reason:
        return None
    d = dict(detail or {})
    if reason == "optout_spike":
        return (f"guard optout_spike: {d.get('opt_outs')} opt-outs ({d.get('stop_replies')} STOP replies + "
                f"{d.get('failed_131050')} × 131050) in {d.get('attempts')} sends = {_pct(d.get('share'))} "
                f"> {_pct(d.get('threshold'))} over {d.get('window_min')} min; a manager may override: "
                f"`campaign resume {campaign} --force`")
    if reason == "failure_spike":
        codes = ", ".join(f"{c}×{n}" for c, n in (d.get("codes") or {}).items())
        return (f"guard failure_spike: {d.get('failed')} failed in {d.get('attempts')} sends = "
                f"{_pct(d.get('share'))} > {_pct(d.get('threshold'))} over {d.get('window_min')} min"
                f"{f' ({codes})' if codes else ''}; a manager may override: `campaign resume {campaign} --force`")
    if reason in ("template_paused", "template_disabled"):
        why = f", {d['reason']}" if d.get("reason") else ""
        then = ("resumes by itself when WhatsApp approves it again" if reason == "template_paused"
                else "a new template is needed")
        return f"template {d.get('template')}/{d.get('language')} is {d.get('status')}{why}: {then}"
    if not d:
        return reason
    return f"{reason}: " + ", ".join(f"{k}={v}" for k, v in d.items())


def _pct(share: object) -> str:
    return f"{float(share) * 100:.1f} %" if isinstance(share, int | float) else "?"


def guard_alert(trip: GuardTrip) -> dict[str, Any]:
    """The Slack incoming-webhook body for a guard trip (text fallback + Block Kit). No phone numbers."""
    line = describe_pause(trip.guard, trip.detail, trip.campaign) or trip.guard
    title = {"optout_spike": "opt-out spike", "failure_spike": "failure spike"}.get(trip.guard, trip.guard)
    summary = f"Campaign {trip.campaign} ({trip.workspace}) paused: {title}"
    return {
        "text": f"{summary}. {line}",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": f"Campaign {trip.campaign} paused: {title}"}},
            {"type": "section", "text": {"type": "mrkdwn", "text": line}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text":
                f"Check the replies, then `broadcaster campaign resume {trip.campaign} --force` to override"}]},
        ],
    }


def _template_alert(name: str, language: str, status: str, reason: str | None, campaigns: list[str]) -> dict[str, Any]:
    names = ", ".join(campaigns) or "none running"
    text = (f"Template {name}/{language} is {status}{f' ({reason})' if reason else ''}: "
            f"campaigns paused: {names}")
    return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}


# ============================================================================ pure: webhook values


@dataclass(frozen=True)
class TemplateChange:
    name: str
    language: str
    status: str | None  # the registry status to set (None: the event changes no status)
    event: str
    reason: str | None
    title: str | None  # other_info.title, e.g. FIRST_PAUSE


def _text(value: Mapping[str, Any], key: str) -> str | None:
    v = value.get(key)
    if v is None:
        return None
    s = str(v).strip()
    return s or None


def parse_template_change(value: Mapping[str, Any]) -> TemplateChange:
    """A `message_template_status_update` value (API doc §4.6) → what to set.

    Raises:
        HealthError: no template name, language or event (names the missing field).
    """
    name = _text(value, "message_template_name")
    language = _text(value, "message_template_language")
    event = (_text(value, "event") or "").upper()
    for key, got in (("message_template_name", name), ("message_template_language", language), ("event", event)):
        if not got:
            raise HealthError(f"message_template_status_update: field {key} is missing or empty")
    status = _STATUS_ALIASES.get(event, event)
    info = value.get("other_info")
    title = _text(info, "title") if isinstance(info, Mapping) else None
    reason = _text(value, "reason")
    return TemplateChange(name, language, status if status in _TEMPLATE_STATUSES else None, event,  # type: ignore[arg-type]
                          None if reason in (None, "NONE") else reason, title)


def normalise_quality(raw: object) -> str | None:
    """GREEN / YELLOW / RED / UNKNOWN from a score or an event word (HIGH, LOW, FLAGGED, …), else None."""
    if not isinstance(raw, str):
        return None
    word = raw.strip().upper()
    word = _QUALITY_WORDS.get(word, word)
    return word if word in _QUALITY_SCORES else None


def parse_limit(raw: object) -> Any:
    """A messaging limit → unique recipients per 24 h (None = unlimited), or _KEEP when it names none.

    'TIER_2K', 'TIER_UNLIMITED', '2000', 2000 → 2000 / None / 2000 / 2000. TIER_NOT_SET → _KEEP.
    """
    if isinstance(raw, bool) or raw is None:
        return _KEEP
    if isinstance(raw, int):
        return raw if raw > 0 else _KEEP
    if not isinstance(raw, str):
        return _KEEP
    text = raw.strip().upper()
    if text in _TIERS:
        return _TIERS[text]
    if text.isdigit() and int(text) > 0:
        return int(text)
    return _KEEP


@dataclass(frozen=True)
class NumberChange:
    field: str
    event: str | None
    phone_number_id: str | None  # when the value names the number by id
    display_phone_number: str | None  # digits only
    quality: str | None  # GREEN / YELLOW / RED / UNKNOWN, None: unchanged
    tier: Any  # int, None (unlimited) or _KEEP

    @property
    def changes_tier(self) -> bool:
        return self.tier is not _KEEP


def parse_number_change(field_name: str, value: Mapping[str, Any]) -> NumberChange:
    """A number-level webhook value → which number, its quality and its messaging limit.

    Quality: an explicit score (quality_rating, current_quality_rating, new_quality_score) wins;
    else the event (FLAGGED → RED, UNFLAGGED → GREEN). Limit: max_daily_conversations_per_business,
    else current_limit / messaging_limit_tier / max_daily_conversation_per_phone, except for a
    THROUGHPUT_UPGRADE event, whose limit field is the throughput level.
    """
    event = (_text(value, "event") or "").upper() or None
    quality = None
    for key in ("quality_rating", "current_quality_rating", "new_quality_score", "quality_score"):
        quality = normalise_quality(value.get(key))
        if quality:
            break
    if quality is None and event in ("FLAGGED", "UNFLAGGED"):
        quality = normalise_quality(event)
    tier: Any = _KEEP
    if event != "THROUGHPUT_UPGRADE":
        for key in ("max_daily_conversations_per_business", "current_limit", "messaging_limit_tier",
                    "whatsapp_business_manager_messaging_limit", "max_daily_conversation_per_phone"):
            tier = parse_limit(value.get(key))
            if tier is not _KEEP:
                break
    meta = value.get("metadata") if isinstance(value.get("metadata"), Mapping) else {}
    pid = _text(value, "phone_number_id") or _text(meta, "phone_number_id")  # type: ignore[arg-type]
    display = _text(value, "display_phone_number") or _text(value, "phone_number") \
        or _text(meta, "display_phone_number")  # type: ignore[arg-type]
    digits = "".join(ch for ch in display if ch.isdigit()) if display else None
    return NumberChange(field_name, event, pid, digits or None, quality, tier)


def mps_for_quality(ceiling: int, quality: str | None) -> int:
    """The rate a number sends at under `quality`: ceiling × QUALITY_RATE, at least 1 msg/s."""
    factor = QUALITY_RATE.get(quality or "GREEN", 1.0)
    return max(1, math.floor(ceiling * factor))


# ============================================================================ guards: the database


_GUARDS_SQL = """
SELECT optout_share, failure_share, window_s, min_sample FROM workspace_guards WHERE workspace = $1
"""


async def get_guards(db: Database | Connection, workspace: str) -> tuple[GuardConfig, bool]:
    """The workspace's thresholds and whether they are its own (False: the defaults)."""
    row = await db.fetchrow(_GUARDS_SQL, workspace)
    if row is None:
        return DEFAULT_GUARDS, False
    return GuardConfig(row["optout_share"], row["failure_share"], row["window_s"], row["min_sample"]), True


async def set_guards(db: Database, workspace: str, **changes: Any) -> GuardConfig:
    """Change some thresholds of a workspace (the others keep their current value); returns all.

    Keys: optout_share, failure_share (None = off), window_s, min_sample. Checked before writing.
    """
    if not await db.fetchval("SELECT true FROM workspaces WHERE name = $1", workspace):
        raise NotFoundError(f"workspace '{workspace}' does not exist: see `broadcaster segments list`")
    unknown = sorted(set(changes) - set(GuardConfig.__dataclass_fields__))
    if unknown:
        raise UsageError(f"unknown guard setting {unknown[0]!r}")
    current, _ = await get_guards(db, workspace)
    config = GuardConfig(**{**asdict(current), **changes})
    await db.execute(
        """INSERT INTO workspace_guards (workspace, optout_share, failure_share, window_s, min_sample)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (workspace) DO UPDATE SET optout_share = EXCLUDED.optout_share,
               failure_share = EXCLUDED.failure_share, window_s = EXCLUDED.window_s,
               min_sample = EXCLUDED.min_sample, updated_at = now()""",
        workspace, config.optout_share, config.failure_share, config.window_s, config.min_sample)
    return config


# One statement per check, whatever the number of campaigns. Per running campaign: its thresholds,
# its window start, and what happened since. Sends are read through the ledger's (number,
# accepted_at) index over the numbers the campaign may send from; failures (a row has failed_at
# iff it failed) through the partial (campaign_id, failed_at) index, one pass grouped by code; STOP
# replies through inbox_messages (campaign_id, received_at). Cost ≈ the rows sent in the window:
# under 1 ms per 1,000 (measured: 100,000 sent in the window → 35-80 ms).
CHECK_SQL = """
WITH c AS (
    SELECT k.id, k.name, k.workspace,
           CASE WHEN g.workspace IS NULL THEN $3::float8 ELSE g.optout_share END AS optout_share,
           CASE WHEN g.workspace IS NULL THEN $4::float8 ELSE g.failure_share END AS failure_share,
           COALESCE(g.window_s, $5::int) AS window_s, COALESCE(g.min_sample, $6::int) AS min_sample,
           GREATEST(now() - make_interval(secs => COALESCE(g.window_s, $5::int)), k.guards_since) AS since,
           array_remove(k.number_pool || k.phone_number_id || $2::text, NULL) AS numbers
    FROM campaigns k LEFT JOIN workspace_guards g ON g.workspace = k.workspace
    WHERE k.id = ANY($1::int[]) AND k.state = 'running'
)
SELECT c.id, c.name, c.workspace, c.optout_share, c.failure_share, c.window_s, c.min_sample, c.since,
       now() AS checked_at, s.accepted, f.failed, f.failed_optout, f.sync_failed, f.codes, r.stop_replies
FROM c
CROSS JOIN LATERAL (
    SELECT count(*) AS accepted FROM ledger l
    WHERE l.phone_number_id = ANY(c.numbers) AND l.accepted_at >= c.since AND l.campaign_id = c.id
) s
CROSS JOIN LATERAL (
    SELECT COALESCE(sum(t.n), 0)::bigint AS failed,
           COALESCE(sum(t.n) FILTER (WHERE t.code = $7::int), 0)::bigint AS failed_optout,
           COALESCE(sum(t.sync), 0)::bigint AS sync_failed,
           COALESCE(jsonb_object_agg(COALESCE(t.code::text, 'none'), t.n), '{}'::jsonb)::text AS codes
    FROM (SELECT l.error_code AS code, count(*) AS n, count(*) FILTER (WHERE l.accepted_at IS NULL) AS sync
          FROM ledger l WHERE l.campaign_id = c.id AND l.failed_at >= c.since GROUP BY 1) t
) f
CROSS JOIN LATERAL (
    SELECT count(DISTINCT m.contact_id) AS stop_replies
    FROM inbox_messages m JOIN inbox_rule_actions a ON a.message_id = m.id
    WHERE m.campaign_id = c.id AND m.received_at >= c.since AND a.action = 'opt_out'
) r
"""


async def check_guards(db: Database, campaign_ids: Sequence[int], *,
                       default_number: str | None = None) -> list[GuardTrip]:
    """Evaluate every guard of the given campaigns that are still running (one query); no side effect.

    `default_number` is the sender number used for campaigns that name none
    (WHATSAPP_PHONE_NUMBER_ID): their sends are counted from it.
    """
    if not campaign_ids:
        return []
    d = DEFAULT_GUARDS
    rows = await db.fetch(CHECK_SQL, list(campaign_ids), default_number, d.optout_share, d.failure_share,
                          d.window_s, d.min_sample, OPTOUT_CODE)
    trips = []
    for r in rows:
        codes = sorted(orjson.loads(r["codes"]).items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_CODES]
        counts = WindowCounts(accepted=r["accepted"], sync_failed=r["sync_failed"], failed=r["failed"],
                              failed_optout=r["failed_optout"], stop_replies=r["stop_replies"], codes=dict(codes))
        config = GuardConfig(r["optout_share"], r["failure_share"], r["window_s"], r["min_sample"])
        verdict = evaluate(counts, config)
        if verdict is not None:
            guard, detail = verdict
            detail = {"guard": guard, **detail, "since": _iso(r["since"]), "tripped_at": _iso(r["checked_at"])}
            trips.append(GuardTrip(r["id"], r["name"], r["workspace"], guard, detail))
    return trips


def _iso(ts: datetime | None) -> str | None:
    return ts.isoformat(timespec="seconds") if ts is not None else None


_PAUSE_SQL = """
UPDATE campaigns SET state = 'paused', pause_reason = $2, pause_detail = $3::jsonb, updated_at = now()
WHERE id = $1 AND state = 'running' RETURNING id
"""
_QUEUE_ALERT_SQL = """
INSERT INTO health_alerts (dedup_key, kind, campaign_id, payload) VALUES ($1, $2, $3, $4::jsonb)
ON CONFLICT (dedup_key) DO NOTHING RETURNING id
"""


async def enforce(db: Database, trip: GuardTrip) -> bool:
    """Pause the campaign with the guard's reason and queue its Slack alert, in one transaction.

    True when this call paused it (another worker, or a manager, may have got there first: then
    nothing is written and nothing is posted).
    """
    async with db.transaction() as conn:
        paused = await conn.fetchval(_PAUSE_SQL, trip.campaign_id, trip.guard, _json(trip.detail))
        if paused is None:
            return False
        await conn.execute(_QUEUE_ALERT_SQL, f"guard:{trip.campaign_id}:{trip.guard}:{trip.detail.get('tripped_at')}",
                           trip.guard, trip.campaign_id, _json(guard_alert(trip)))
    metrics.record_circuit_breaker_trip(trip.guard)
    metrics.record_campaign_state("paused")
    logger.warning("guard %s paused campaign=%s workspace=%s: %s", trip.guard, trip.campaign, trip.workspace,
                   describe_pause(trip.guard, trip.detail, trip.campaign))
    return True


def _json(obj: object) -> str:
    return orjson.dumps(obj).decode()


class GuardMonitor:
    """A worker's guard loop, driven by its claim cycle: `check(ids)` evaluates at most every
    `interval_s` (and keeps the checks under CHECK_BUDGET of the time), pauses what trips and
    posts the alerts. Returns the campaigns it paused, so the caller stops sending them now.

    Args:
        slack: where alerts go (None: they stay queued in health_alerts for a process that has one).
        default_number: the sender number of campaigns that name none.
    """

    def __init__(self, db: Database, *, slack: SlackConfig | None = None, default_number: str | None = None,
                 interval_s: float = CHECK_INTERVAL_S) -> None:
        self.db = db
        self.slack = slack
        self.default_number = default_number
        self.interval_s = interval_s
        self.trips: list[GuardTrip] = []  # what this monitor paused (logs, tests)
        self._due = -math.inf
        self._client: httpx.AsyncClient | None = None

    async def check(self, campaign_ids: Sequence[int]) -> set[int]:
        """Evaluate the guards if due; the ids of campaigns paused by this call."""
        now = trio.current_time()
        if not campaign_ids or now < self._due:
            return set()
        self._due = now + self.interval_s
        paused: set[int] = set()
        try:
            trips = await check_guards(self.db, campaign_ids, default_number=self.default_number)
            self._due = now + max(self.interval_s, (trio.current_time() - now) / CHECK_BUDGET)
            for trip in trips:
                if await enforce(self.db, trip):
                    paused.add(trip.campaign_id)
                    self.trips.append(trip)
            if paused and self.slack is not None:
                with trio.move_on_after(ALERT_INLINE_S):
                    await send_due_alerts(self.db, self._http(), self.slack)
        except DatabaseError as exc:  # sending goes on; the guards look again at the next check
            logger.error("guard check failed, retrying in %.0f s: %s", self.interval_s, exc)
        return paused

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient()
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP client, if one was opened."""
        if self._client is not None:
            client, self._client = self._client, None
            with trio.move_on_after(5, shield=True):
                await client.aclose()


# ============================================================================ alerts: the outbox


_CLAIM_ALERTS_SQL = """
UPDATE health_alerts a SET state = 'sending', attempts = a.attempts + 1,
       lease_until = now() + make_interval(secs => $1)
WHERE a.id IN (SELECT id FROM health_alerts
               WHERE (state = 'pending' AND next_attempt_at <= now()) OR (state = 'sending' AND lease_until < now())
               ORDER BY next_attempt_at, id LIMIT $2 FOR UPDATE SKIP LOCKED)
RETURNING a.id, a.kind, a.campaign_id, a.payload, a.attempts
"""
_RECORD_ALERT_SQL = """
UPDATE health_alerts SET state = $2, last_error = $3, lease_until = NULL,
       sent_at = CASE WHEN $2 = 'sent' THEN now() ELSE sent_at END,
       next_attempt_at = now() + make_interval(secs => $4)
WHERE id = $1
"""


async def send_due_alerts(db: Database, client: httpx.AsyncClient, config: SlackConfig) -> int:
    """Claim and post every due alert (SKIP LOCKED: several processes share the queue); returns how
    many were posted. A refused post (4xx) is `failed` at once; an unavailable Slack is retried
    after requeue_s · 2^(claims-1), `failed` after max_claims."""
    sent = 0
    while True:
        rows = await db.fetch(_CLAIM_ALERTS_SQL, config.lease_s, config.batch)
        if not rows:
            return sent
        for row in rows:
            state, error, delay = "sent", None, 0.0
            try:
                await post_escalation(client, config, orjson.loads(row["payload"]))
            except SlackRejected as exc:
                state, error = "failed", str(exc)
            except SlackUnavailable as exc:
                error = str(exc)
                if row["attempts"] >= config.max_claims:
                    state = "failed"
                else:
                    state, delay = "pending", config.requeue_s * 2 ** (row["attempts"] - 1)
            if state == "sent":
                sent += 1
                logger.info("health alert %d (%s) posted to Slack", row["id"], row["kind"])
            else:
                logger.error("health alert %d (%s) not posted (%s): %s", row["id"], row["kind"], state, error)
            with trio.CancelScope(shield=True):  # an outcome, once known, is written even when cancelled
                await db.execute(_RECORD_ALERT_SQL, row["id"], state, error, delay)


async def run_alert_sender(db: Database, slack: SlackConfig, *, sweep_s: float = ALERT_SWEEP_S,
                           task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Post queued health alerts (template pauses from the webhook process, retries) until cancelled.

    Every `sweep_s`; a database or Slack failure is logged and retried at the next sweep.
    """
    async with httpx.AsyncClient() as client:
        task_status.started()
        while True:
            try:
                await send_due_alerts(db, client, slack)
            except BroadcasterError as exc:
                logger.error("health alerts: round failed: %s", exc)
            await trio.sleep(sweep_s)


# ============================================================================ webhook changes


async def handle_change(db: Database, field_name: str, value: dict[str, Any]) -> None:
    """The apply worker's hook for recognised non-message changes (called at least once per change).

    Idempotent: handling the same value twice leaves the same state and queues no second alert.

    Raises:
        HealthError: the value lacks what its field needs (the change stays in webhook_changes
            with this message as last_error).
    """
    if field_name == "message_template_status_update":
        await _template_status(db, parse_template_change(value))
    elif field_name == "message_template_quality_update":
        await _template_quality(db, value)
    elif field_name in _NUMBER_FIELDS:
        await _number_change(db, parse_number_change(field_name, value))
    else:
        logger.debug("health: %s changes need nothing here", field_name)


_OLD_TEMPLATE_STATUS_SQL = "SELECT status FROM templates WHERE name = $1 AND language = $2 FOR UPDATE"
# a campaign "uses" (name, language) when it is its default language or unsettled rows are in it
_USES = """k.template_name = $1 AND (k.default_language = $2 OR EXISTS (
    SELECT 1 FROM ledger l WHERE l.campaign_id = k.id AND l.language = $2
    AND l.state IN ('pending', 'claimed', 'unknown')))"""
_PAUSE_TEMPLATE_SQL = f"""
UPDATE campaigns k SET state = 'paused', pause_reason = $3, pause_detail = $4::jsonb, updated_at = now()
WHERE k.state = 'running' AND {_USES} RETURNING k.id, k.name
"""
_RELABEL_BREAKER_SQL = f"""
UPDATE campaigns k SET pause_reason = $3, pause_detail = $4::jsonb || jsonb_build_object('was', k.pause_reason),
       updated_at = now()
WHERE k.state = 'paused' AND k.pause_reason = ANY($5::text[]) AND {_USES} RETURNING k.id, k.name
"""
_WAITING_SQL = """
SELECT id, name FROM campaigns WHERE state = 'paused' AND pause_reason = 'template_paused'
  AND pause_detail->>'template' = $1 AND pause_detail->>'language' = $2 ORDER BY id
"""
# the campaign's other variants still not sendable (it stays paused for the first of them)
_STILL_PAUSED_SQL = """
SELECT t.language, t.status FROM templates t JOIN campaigns k ON k.template_name = t.name
WHERE k.id = $1 AND t.status <> 'APPROVED' AND (k.default_language = t.language OR EXISTS (
    SELECT 1 FROM ledger l WHERE l.campaign_id = k.id AND l.language = t.language
    AND l.state IN ('pending', 'claimed', 'unknown')))
ORDER BY t.language LIMIT 1
"""
_RESUME_SQL = """
UPDATE campaigns SET state = 'running', pause_reason = NULL, pause_detail = NULL, updated_at = now()
WHERE id = $1 AND state = 'paused' AND pause_reason = 'template_paused' RETURNING id
"""


async def _template_status(db: Database, change: TemplateChange) -> None:
    if change.status is None:
        logger.info("template %s/%s: event %s (no status change)", change.name, change.language, change.event)
        return
    async with db.transaction() as conn:
        old = await conn.fetchval(_OLD_TEMPLATE_STATUS_SQL, change.name, change.language)
        if old is None:
            logger.info("template %s/%s is %s but not in the registry: nothing uses it", change.name,
                        change.language, change.status)
            return
        await conn.execute("UPDATE templates SET status = $3, updated_at = now() WHERE name = $1 AND language = $2",
                           change.name, change.language, change.status)
        paused: list[Any] = []
        if change.status != "APPROVED":
            reason = "template_paused" if change.status == "PAUSED" else "template_disabled"
            detail = {"template": change.name, "language": change.language, "status": change.status,
                      "event": change.event, "reason": change.reason, "title": change.title}
            paused = list(await conn.fetch(_PAUSE_TEMPLATE_SQL, change.name, change.language, reason,
                                           _json(detail)))
            relabelled = await conn.fetch(_RELABEL_BREAKER_SQL, change.name, change.language, reason, _json(detail),
                                          [f"circuit_breaker:{c}" for c in TEMPLATE_HALT_CODES])
            if paused or relabelled:
                names = [r["name"] for r in [*paused, *relabelled]]
                key = f"template:{change.name}:{change.language}:{change.status}:" + _digest(names, change)
                await conn.execute(_QUEUE_ALERT_SQL, key, reason, None,
                                   _json(_template_alert(change.name, change.language, change.status,
                                                         change.reason, names)))
    if change.status != "APPROVED":
        for r in paused:
            metrics.record_campaign_state("paused")
            metrics.record_circuit_breaker_trip("template_paused" if change.status == "PAUSED" else "template_disabled")
            logger.warning("template %s/%s is %s: campaign=%s paused", change.name, change.language,
                           change.status, r["name"])
        if old != change.status:
            logger.warning("template %s/%s: %s → %s", change.name, change.language, old, change.status)
        return
    await _resume_waiting(db, change.name, change.language)


def _digest(names: list[str], change: TemplateChange) -> str:
    return hashlib.sha1(_json([sorted(names), change.event, change.reason, change.title]).encode()).hexdigest()[:16]


async def _resume_waiting(db: Database, name: str, language: str) -> int:
    """Resume the campaigns paused for (name, language) once pre-flight passes again; returns how
    many resumed."""
    resumed = 0
    for r in await db.fetch(_WAITING_SQL, name, language):
        still = await db.fetchrow(_STILL_PAUSED_SQL, r["id"])
        if still is not None:  # another variant it uses is still paused: wait for that one now
            await db.execute(
                "UPDATE campaigns SET pause_detail = pause_detail || jsonb_build_object('language', $2::text,"
                " 'status', $3::text), updated_at = now() WHERE id = $1 AND state = 'paused'",
                r["id"], still["language"], still["status"])
            logger.info("campaign=%s stays paused: template %s/%s is %s", r["name"], name, still["language"],
                        still["status"])
            continue
        campaign = await get_campaign_by_id(db, r["id"])
        try:
            await compile_for(db, campaign)
        except BroadcasterError as exc:
            logger.error("campaign=%s stays paused: pre-flight failed after %s/%s was approved: %s",
                         r["name"], name, language, exc)
            continue
        if await db.fetchval(_RESUME_SQL, r["id"]) is not None:
            resumed += 1
            metrics.record_campaign_state("running")
            logger.warning("template %s/%s approved again: campaign=%s resumed", name, language, r["name"])
    return resumed


_APPROVED_AGAIN_SQL = """
SELECT DISTINCT t.name, t.language FROM campaigns c
JOIN templates t ON t.name = c.pause_detail->>'template' AND t.language = c.pause_detail->>'language'
WHERE c.state = 'paused' AND c.pause_reason = 'template_paused' AND t.status = 'APPROVED'
"""


async def resume_approved_templates(db: Database) -> int:
    """Resume the `template_paused` campaigns whose template variant the registry has APPROVED
    again (after a sync, when the APPROVED webhook never came); pre-flight must pass. Returns how
    many resumed."""
    resumed = 0
    for r in await db.fetch(_APPROVED_AGAIN_SQL):
        resumed += await _resume_waiting(db, r["name"], r["language"])
    return resumed


TEMPLATE_RECHECK_S = 600.0  # Meta's pauses last 3 h then 6 h: a 10-min recheck ends them within minutes


async def recheck_paused_templates(db: Database, settings: Settings) -> int:
    """One pass: if a campaign waits on a paused template, read the templates from the Graph API
    (WHATSAPP_WABA_ID) into the registry, then resume what is APPROVED again. Returns how many
    campaigns resumed; without a WABA id only the registry as it stands is consulted."""
    waiting = await db.fetchval(
        "SELECT count(*) FROM campaigns WHERE state = 'paused' AND pause_reason = 'template_paused'")
    if not waiting:
        return 0
    if settings.whatsapp_waba_id:
        summary = await sync_templates(db, settings)
        logger.info("template recheck: %d campaign(s) wait on a paused template; read %d templates",
                    waiting, summary.read)
    return await resume_approved_templates(db)


async def run_template_recheck(db: Database, settings: Settings, *, interval_s: float = TEMPLATE_RECHECK_S,
                               task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """`recheck_paused_templates` every `interval_s` until cancelled; failures are logged and the
    next round tries again."""
    if not settings.whatsapp_waba_id:
        logger.warning("template recheck: WHATSAPP_WABA_ID is not set, so a template pause that ends "
                       "without an APPROVED webhook is only noticed after `broadcaster templates sync`")
    task_status.started()
    while True:
        try:
            await recheck_paused_templates(db, settings)
        except (BroadcasterError, httpx.HTTPError, ValueError) as exc:
            logger.error("template recheck: round failed: %s", exc)
        await trio.sleep(interval_s)


async def _template_quality(db: Database, value: Mapping[str, Any]) -> None:
    name = _text(value, "message_template_name")
    language = _text(value, "message_template_language")
    quality = normalise_quality(value.get("new_quality_score"))
    for key, got in (("message_template_name", name), ("message_template_language", language),
                     ("new_quality_score", quality)):
        if not got:
            raise HealthError(f"message_template_quality_update: field {key} is missing or not "
                              "GREEN/YELLOW/RED/UNKNOWN")
    done = await db.fetchval("UPDATE templates SET quality = $3, updated_at = now()"
                             " WHERE name = $1 AND language = $2 RETURNING true", name, language, quality)
    if done:
        log = logger.warning if quality in ("YELLOW", "RED") else logger.info
        log("template %s/%s quality is %s", name, language, quality)


_NUMBER_SQL = """
SELECT phone_number_id, mps, mps_ceiling, tier, quality FROM sender_numbers
WHERE ($1::text IS NOT NULL AND phone_number_id = $1)
   OR ($2::text IS NOT NULL AND regexp_replace(COALESCE(display_phone_number, ''), '\\D', '', 'g') = $2)
"""


async def _number_change(db: Database, change: NumberChange) -> None:
    if change.quality is None and not change.changes_tier:
        logger.info("health: %s event %s changes no quality or limit", change.field, change.event)
        return
    if change.field == "business_capability_update":  # the business portfolio's limit: every number
        rows = await db.fetch("SELECT phone_number_id, mps, mps_ceiling, tier, quality FROM sender_numbers")
    else:
        rows = await db.fetch(_NUMBER_SQL, change.phone_number_id, change.display_phone_number)
        if not rows:
            rows = await db.fetch("SELECT phone_number_id, mps, mps_ceiling, tier, quality FROM sender_numbers")
            if len(rows) != 1:  # with one number there is no doubt; with several, say how to tell them apart
                raise HealthError(
                    f"{change.field}: no sender number has display number {mask_phone(change.display_phone_number)}"
                    f" or id {change.phone_number_id}: set it with `broadcaster health number PHONE_NUMBER_ID"
                    " --display DIGITS`")
    for row in rows:
        await _apply_number(db, row, change)


async def _apply_number(db: Database, row: Any, change: NumberChange) -> None:
    ceiling = row["mps_ceiling"] or row["mps"]
    quality = change.quality or row["quality"]
    mps = mps_for_quality(ceiling, quality)
    tier = row["tier"] if not change.changes_tier else change.tier
    await db.execute(
        "UPDATE sender_numbers SET quality = $2, mps = $3, mps_ceiling = $4, tier = $5 WHERE phone_number_id = $1",
        row["phone_number_id"], quality, mps, None if mps == ceiling else ceiling, tier)
    if (quality, mps, tier) != (row["quality"], row["mps"], row["tier"]):
        logger.warning("number %s: quality %s → %s, rate %s → %s msg/s (ceiling %s), tier %s → %s (%s %s)",
                       row["phone_number_id"], row["quality"], quality, row["mps"], mps, ceiling, row["tier"],
                       tier, change.field, change.event)


# ============================================================================ numbers: CLI support


@dataclass(frozen=True)
class NumberHealth:
    phone_number_id: str
    workspace: str
    display_phone_number: str | None
    quality: str
    mps: int
    mps_ceiling: int  # the configured rate (equal to mps unless quality holds it lower)
    tier: int | None


async def list_numbers_health(db: Database) -> list[NumberHealth]:
    rows = await db.fetch("SELECT phone_number_id, workspace, display_phone_number, quality, mps,"
                          " COALESCE(mps_ceiling, mps) AS mps_ceiling, tier FROM sender_numbers ORDER BY 1")
    return [NumberHealth(**dict(r)) for r in rows]


async def set_display_number(db: Database, phone_number_id: str, display: str) -> None:
    """Record the number's display number (what quality webhooks name it by)."""
    digits = "".join(ch for ch in display if ch.isdigit())
    if len(digits) < 6:
        raise UsageError(f"--display {display!r}: expected the number's digits, e.g. 15550783881")
    done = await db.fetchval("UPDATE sender_numbers SET display_phone_number = $2 WHERE phone_number_id = $1"
                             " RETURNING true", phone_number_id, digits)
    if not done:
        raise NotFoundError(f"number {phone_number_id} is not configured: `broadcaster numbers add "
                            f"{phone_number_id} --workspace W`")

