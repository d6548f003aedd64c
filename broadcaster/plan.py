"""The send plan: what launching a campaign would do, before anything is sent.

    audience after suppression and caps (per language variant, skipped by reason)
    pre-flight result (template, variables, sender number)
    estimate: at the number's messages/s and daily tier budget, when it finishes — or after how
              many recipients the tier runs out, and when it could continue

Guarantees:
- The audience numbers are exactly what `launch` would freeze now: for a campaign not yet
  launched (draft, scheduled, a recurring series' next run) the real freeze runs inside a
  transaction that is always rolled back, so nothing is written; for a launched campaign they
  come from its ledger (what is still unsettled is what is left to send).
- `estimate` is a pure function of its inputs; times are aware UTC datetimes, never process-local.

What it is not: not a promise. The ETA assumes the number sends at its configured rate
(sender_numbers.mps, default 80/s) without throttling; throttles (130429) and retries make a
real run slower. The tier (sender_numbers.tier, NULL = unlimited) counts unique recipients
accepted from any number of the number's business portfolio in a rolling 24 h
(`broadcaster.numbers.tier_usage`); when it runs
out the engine pauses the campaign (`tier_exhausted`) until budget frees up.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import trio

from broadcaster.campaign_run import DEFAULT_MPS
from broadcaster.campaigns import (
    FINAL_STATES,
    Campaign,
    PreflightFailed,
    compile_for,
    freeze_audience,
    get_campaign,
    is_marketing,
    marketing_cap,
    skip_reason_sql,
)
from broadcaster.db import Connection, Database
from broadcaster.errors import BroadcasterError, DatabaseError
from broadcaster.ledger import claimed_rows
from broadcaster.numbers import sender_pool, sending_rate, tier_usage
from broadcaster.schedule import workspace_timezone
from templates.render import CompiledCampaign, Skip

__all__ = ["Estimate", "SendPlan", "estimate", "send_plan"]

TIER_WINDOW = timedelta(hours=24)
NOT_LAUNCHED = ("draft", "scheduled", "recurring")
MAX_TIER_WINDOWS = 36_600  # beyond ~100 years of tier-limited days the estimate says never


@dataclass(frozen=True)
class Estimate:
    """When sending `to_send` recipients from `start` would finish.

    budget_stops_after: recipients sent before the tier budget runs out (None: it does not run out);
    pause_at / continue_at: when the engine would pause for the tier and when budget frees up again.
    finish_at is None when it can never finish (a tier of 0, or more than MAX_TIER_WINDOWS days).
    """

    start_at: datetime
    finish_at: datetime | None
    send_s: float                       # time spent sending at the configured rate
    budget_stops_after: int | None = None
    pause_at: datetime | None = None
    continue_at: datetime | None = None


def estimate(*, to_send: int, new_recipients: int, mps: float, tier_limit: int | None,
             tier_remaining: int | None, oldest_in_window: datetime | None, start: datetime) -> Estimate:
    """ETA at `mps` messages/s under a daily unique-recipient tier.

    Args:
        to_send: recipients left to send.
        new_recipients: those of them not yet reached from this number in the last 24 h (only
            these consume tier budget).
        tier_limit / tier_remaining: the tier and what is left of it now (None = unlimited).
        oldest_in_window: the oldest first contact still in the 24 h window (budget frees 24 h
            after it); None when the window is empty.

    Model: sending is uniform at `mps`; already-reached recipients are spread evenly through the
    audience, so the budget runs out after tier_remaining × to_send / new_recipients of them. The
    window then frees up 24 h after its oldest contact (or 24 h after this start), and each later
    24 h window admits `tier_limit` more new recipients.

    Worked example: 10,000 to send, all new, 80/s, tier 2,000 with 500 used, oldest contact 20:00
    yesterday, start 10:00 → stops after 1,500 (10:00:19), continues at 20:00 today, sends 2,000
    more per window: 8,500 new left = 4 full windows, then 500 more: done at 20:00 four days
    after it continues, plus 500/80 s.
    """
    if mps <= 0:
        raise ValueError(f"mps must be positive, got {mps}")
    send_s = to_send / mps
    if to_send <= 0:
        return Estimate(start, start, 0.0)
    if tier_remaining is None or tier_limit is None or new_recipients <= tier_remaining:
        return Estimate(start, start + timedelta(seconds=send_s), send_s)
    new_share = new_recipients / to_send
    stops_after = min(to_send, math.floor(tier_remaining / new_share))
    pause_at = start + timedelta(seconds=stops_after / mps)
    frees_at = (oldest_in_window or start) + TIER_WINDOW
    continue_at = max(pause_at, frees_at)
    if tier_limit <= 0:
        return Estimate(start, None, send_s, stops_after, pause_at, None)
    rest_new = new_recipients - tier_remaining
    full_windows = (rest_new - 1) // tier_limit          # windows filled to the tier before the last one
    per_window = max(TIER_WINDOW, timedelta(seconds=tier_limit / new_share / mps))  # the rate may be slower
    last_s = (rest_new - full_windows * tier_limit) / new_share / mps
    if full_windows > MAX_TIER_WINDOWS:
        finish = None
    else:
        finish = continue_at + full_windows * per_window + timedelta(seconds=last_s)
    return Estimate(start, finish, send_s, stops_after, pause_at, continue_at)


@dataclass(frozen=True)
class SendPlan:
    campaign: str
    state: str
    template: str
    category: str | None
    segment: str
    timezone: str
    frozen: bool                        # numbers from the ledger (launched) vs. a rolled-back dry run
    audience: int                       # every member of the segment (deduplicated by number)
    skipped: dict[str, int]             # reason → recipients not sent (suppression, caps, …)
    to_send: int                        # what would be (or is still to be) sent
    by_language: dict[str, int]         # template language variant → recipients to send
    preflight_ok: bool
    problems: list[str]
    warnings: list[str]
    number: str | None
    mps: float
    tier: int | None
    tier_reached: int                   # unique recipients reached from the number in the last 24 h
    tier_remaining: int | None
    new_recipients: int                 # of to_send, those who would consume tier budget
    eta: Estimate
    settled: dict[str, int] = field(default_factory=dict)  # launched: rows already in a final state

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key, value in list(out["eta"].items()):
            if isinstance(value, datetime):
                out["eta"][key] = value.astimezone(UTC).isoformat()
        return out


@contextlib.asynccontextmanager
async def _rolled_back(db: Database) -> AsyncIterator[Connection]:
    """A connection inside a transaction that is always rolled back (shielded, like db.py's)."""
    async with db.acquire() as conn:
        await conn.execute("BEGIN")
        try:
            yield conn
        finally:
            with trio.move_on_after(10, shield=True), contextlib.suppress(DatabaseError):
                await conn.execute("ROLLBACK")


_COUNTS = """
SELECT language, state, skip_reason, count(*)::bigint AS n FROM ledger WHERE campaign_id = $1
GROUP BY 1, 2, 3
"""
# recipients left to send that were NOT reached from this number in the last 24 h
_NEW_RECIPIENTS = """
SELECT count(*) FROM (SELECT DISTINCT wa_id FROM ledger
                      WHERE campaign_id = $1 AND state IN ('pending', 'claimed', 'unknown')) todo
WHERE NOT EXISTS (
    SELECT 1 FROM portfolio_reach r
    WHERE r.portfolio = portfolio_of($2) AND r.wa_id = todo.wa_id AND r.last_at > now() - interval '24 hours')
"""


async def send_plan(db: Database, name: str, *, default_number: str | None, now: datetime) -> SendPlan:
    """The plan for campaign `name` as of `now` (aware). `default_number` is the sender used by
    campaigns without one (WHATSAPP_PHONE_NUMBER_ID)."""
    if now.tzinfo is None:
        raise ValueError("send_plan(now=…) needs an aware datetime")
    campaign = await get_campaign(db, name)
    problems: list[str] = []
    warnings: list[str] = []
    compiled = category = None
    finished = campaign.state in FINAL_STATES  # nothing left to send: no pre-flight to pass
    try:
        if not finished:
            compiled, category = await compile_for(db, campaign)
            warnings.extend(compiled.warnings)
    except PreflightFailed as exc:
        problems.extend(exc.problems)
    except DatabaseError:
        raise
    except BroadcasterError as exc:  # template missing, …
        problems.append(str(exc))
    pool = await sender_pool(db, workspace=campaign.workspace, phone_number_id=campaign.phone_number_id,
                             number_pool=campaign.number_pool, default_number=default_number)
    number = pool[0] if pool else None
    if number is None and not finished:
        problems.append(f"no sender number: `broadcaster numbers add PHONE_NUMBER_ID --workspace "
                        f"{campaign.workspace}`, set WHATSAPP_PHONE_NUMBER_ID, or create the campaign with --number")

    mps, tier = float(DEFAULT_MPS), None
    if number is not None:
        row = await db.fetchrow("SELECT mps, tier FROM sender_numbers WHERE phone_number_id = $1", number)
        if row is not None:
            mps, tier = float(row["mps"]), row["tier"]
    tiered = number if tier is not None else None  # new recipients matter only under a tier

    frozen = campaign.state not in NOT_LAUNCHED
    render_skips: dict[tuple[str, str], int] = {}
    if frozen:
        rows = await db.fetch(_COUNTS, campaign.id)
        new = await _new_recipients(db, campaign.id, tiered)
        if compiled is not None:
            render_skips = await _render_skips(db, campaign.id, compiled)
    elif compiled is not None:
        async with _rolled_back(db) as conn:
            await freeze_audience(conn, campaign, compiled, marketing=is_marketing(category))
            rows = await conn.fetch(_COUNTS, campaign.id)
            new = await _new_recipients(conn, campaign.id, tiered)
            render_skips = await _render_skips(conn, campaign.id, compiled)
    else:  # pre-flight failed: no language choice possible; count the segment by contact language
        rows, category = await _segment_counts(db, campaign)
        new = None

    skipped: dict[str, int] = {}
    by_language: dict[str, int] = {}
    settled: dict[str, int] = {}
    audience = 0
    for r in rows:
        n = int(r["n"])
        audience += n
        if r["state"] == "skipped":
            reason = r["skip_reason"] or "unknown"
            skipped[reason] = skipped.get(reason, 0) + n
        elif r["state"] in ("pending", "claimed", "unknown"):
            by_language[r["language"]] = by_language.get(r["language"], 0) + n
        else:
            settled[r["state"]] = settled.get(r["state"], 0) + n
    for (language, reason), n in render_skips.items():  # pending now, skipped when rendered
        by_language[language] -= n
        skipped[reason] = skipped.get(reason, 0) + n
    by_language = {k: v for k, v in by_language.items() if v > 0}
    if new is not None and render_skips:
        new = max(0, new - sum(render_skips.values()))
    to_send = sum(by_language.values())
    by_language = dict(sorted(by_language.items(), key=lambda kv: (-kv[1], kv[0])))

    usage = await tier_usage(db, number, tier, default_number=default_number) if number and tier else None
    reached = usage.reached if usage else 0
    remaining = usage.remaining if usage else None
    start = now
    if campaign.state in ("scheduled", "recurring"):  # it would start at its next slot
        slot = await db.fetchval("SELECT next_run_at FROM schedules WHERE campaign_id = $1 AND state = 'active'",
                                 campaign.id)
        start = max(now, slot) if slot else now
    new_recipients = to_send if new is None else new
    # the engine's real sending rate (just under the ceiling), so the ETA matches the run
    eta = estimate(to_send=to_send, new_recipients=new_recipients, mps=sending_rate(mps), tier_limit=tier,
                   tier_remaining=remaining, oldest_in_window=usage.oldest_at if usage else None, start=start)
    return SendPlan(
        campaign=campaign.name, state=campaign.state, template=campaign.template_name, category=category,
        segment=campaign.segment, timezone=await workspace_timezone(db, campaign.workspace), frozen=frozen,
        audience=audience, skipped=skipped, to_send=to_send, by_language=by_language,
        preflight_ok=not problems, problems=problems, warnings=warnings, number=number, mps=mps, tier=tier,
        tier_reached=reached, tier_remaining=remaining, new_recipients=new_recipients, eta=eta, settled=settled)


_PENDING_CONTACTS = """
SELECT l.id, l.campaign_id, l.wa_id, l.language, l.attempts, c.name, c.genre, c.language AS contact_language,
       c.city, c.followers, c.external_id, c.attributes
FROM ledger l JOIN contacts c ON c.id = l.contact_id
WHERE l.campaign_id = $1 AND l.state = 'pending' AND l.id > $2
ORDER BY l.id LIMIT $3
"""
RENDER_PAGE = 5_000


async def _render_skips(db: Database | Connection, campaign_id: int,
                        compiled: CompiledCampaign) -> dict[tuple[str, str], int]:
    """(frozen language, reason) → pending rows the sender will skip when it renders them (an
    empty variable, a body over its limit): rendered here exactly as the sender would."""
    skips: dict[tuple[str, str], int] = {}
    after = 0
    while True:
        page = await db.fetch(_PENDING_CONTACTS, campaign_id, after, RENDER_PAGE)
        for row in claimed_rows(page):
            result = compiled.render_frozen(row.contact, row.language)
            if isinstance(result, Skip):
                key = (row.language, result.reason)
                skips[key] = skips.get(key, 0) + 1
        if len(page) < RENDER_PAGE:
            return skips
        after = page[-1]["id"]
        await trio.lowlevel.checkpoint()


async def _new_recipients(db: Database | Connection, campaign_id: int, number: str | None) -> int | None:
    """Recipients still to send whom the number's portfolio has not reached in 24 h."""
    if number is None:
        return None
    return int(await db.fetchval(_NEW_RECIPIENTS, campaign_id, number))


async def _segment_counts(db: Database, campaign: Campaign) -> tuple[list[dict[str, Any]], str | None]:
    """Segment members by contact language and skip reason (used only when pre-flight failed, so
    no variant can be chosen), and the template's category when the template exists."""
    from broadcaster.segment_store import get_segment
    from broadcaster.template_store import load_variants
    from segments.filters import compile_filter

    try:
        seg = await get_segment(db, campaign.segment)
    except BroadcasterError:
        return [], None
    category = None
    with contextlib.suppress(BroadcasterError):
        variants = await load_variants(db, campaign.template_name)
        default = variants.get(campaign.default_language) or next(iter(variants.values()))
        category = default.category
    cap = await marketing_cap(db, campaign.workspace)
    where, params = compile_filter(seg, first_param=3, alias="c")
    rows = await db.fetch(
        f"SELECT COALESCE(c.language, '?') AS language, s.reason, count(DISTINCT c.wa_id)::bigint AS n"
        f" FROM contacts c CROSS JOIN LATERAL (SELECT {skip_reason_sql(1, 2)} AS reason) s"
        f" WHERE {where} GROUP BY 1, 2", is_marketing(category), cap, *params)
    return [{"language": r["language"], "state": "skipped" if r["reason"] else "pending",
             "skip_reason": r["reason"], "n": r["n"]} for r in rows], category
