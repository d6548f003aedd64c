"""The ledger: one row per (campaign, recipient); every send decision is a row update.

    pending ──claim──▶ claimed ──POST──▶ accepted(wamid) ──▶ sent ──▶ delivered ──▶ read
       ▲                  │  │                 └──▶ failed(code)        (status webhook)
       └── retry_at ◀─────┘  ├──▶ failed(code)                          (permanent error at send)
                             └──▶ unknown                               (timeout / crash)
    skipped(reason): decided before any send (opted out, capped, invalid value, …)

Guarantees:
- a row is claimed by at most one worker at a time (SKIP LOCKED);
- a row whose lease expired becomes `unknown`, never `pending`: it is not re-sent until a status
  webhook settles it or its campaign's grace period passes (then resent or failed, by policy);
- every call here is one round trip for a whole batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from broadcaster.db import Database
from broadcaster.numbers import tier_usage
from broadcaster.sql import QUERIES

TERMINAL_STATES = ("accepted", "sent", "delivered", "read", "failed", "skipped")
UNSETTLED_STATES = ("pending", "claimed", "unknown")
ALL_STATES = ("pending", "claimed", "unknown", *TERMINAL_STATES)


@dataclass(frozen=True, slots=True)
class ClaimedRow:
    """One claimed recipient with what rendering needs."""

    id: int
    campaign_id: int
    wa_id: str
    language: str
    attempts: int
    contact: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one claimed row; written back in batches by `record_results`.

    state: accepted | pending (deferred: retry_at set) | failed | unknown | skipped
    attempt_inc: 1 when a request reached the provider and counts against the attempt budget
    (throttling never does).
    """

    id: int
    state: str
    wamid: str | None = None
    code: int | None = None
    title: str | None = None
    attempt_inc: int = 0
    retry_at: datetime | None = None
    skip_reason: str | None = None
    campaign_id: int = 0  # not written; lets the writer attribute halts to their campaign
    number: str | None = None  # the sender phone_number_id that sent it (accepted rows)


@dataclass
class CampaignCounts:
    """Recipients per ledger state, straight from the ledger."""

    by_state: dict[str, int] = field(default_factory=dict)

    @property
    def audience(self) -> int:
        return sum(self.by_state.values())

    @property
    def unsettled(self) -> int:
        return sum(self.by_state.get(s, 0) for s in UNSETTLED_STATES)

    def __getitem__(self, state: str) -> int:
        return self.by_state.get(state, 0)


def callback_data(campaign_id: int, ledger_id: int) -> str:
    """The `biz_opaque_callback_data` sent with each message: `<campaign id>:<ledger row id>`."""
    return f"{campaign_id}:{ledger_id}"


def parse_callback_data(value: str | None) -> tuple[int, int] | None:
    """(campaign id, ledger id) from our callback data, or None when it is not ours."""
    if not value or value.count(":") != 1:
        return None
    left, right = value.split(":")
    if not (left.isascii() and left.isdigit() and right.isascii() and right.isdigit()):
        return None
    return int(left), int(right)


def claimed_rows(rows: Sequence[Any]) -> list[ClaimedRow]:
    """ClaimedRows from rows with the claim's columns (ledger row + the contact's fields)."""
    claimed = []
    for r in rows:
        attrs = r["attributes"]
        contact = {
            "name": r["name"], "genre": r["genre"], "language": r["contact_language"],
            "city": r["city"], "followers": r["followers"], "external_id": r["external_id"],
            "wa_id": r["wa_id"],
            "attributes": orjson.loads(attrs) if isinstance(attrs, str | bytes) else (attrs or {}),
        }
        claimed.append(ClaimedRow(r["id"], r["campaign_id"], r["wa_id"], r["language"],
                                  r["attempts"], contact))
    return claimed


@dataclass(frozen=True, slots=True)
class TierBudget:
    """A daily tier a claim must stay within: the sending number, its tier, and the deployment's
    default number (WHATSAPP_PHONE_NUMBER_ID), which sends for campaigns without one."""

    number: str
    limit: int
    default_number: str | None = None


_LOCK_TIERS = """
SELECT count(pg_advisory_xact_lock(k))
FROM (SELECT DISTINCT hashtext('tier:' || portfolio_of(n)) AS k FROM unnest($1::text[]) AS n ORDER BY 1) s
"""


class LedgerStore:
    """The Postgres ledger. Batch calls only: claim_batch, record_results, expire_leases."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def claim_batch(self, campaign_ids: Sequence[int], limit: int, *, lease_s: float,
                          owner: str, pair_spacing_s: float = 0.0,
                          tiers: Mapping[int, TierBudget] | None = None,
                          senders: Mapping[int, str] | None = None) -> list[ClaimedRow]:
        """Claim up to `limit` sendable rows. With `pair_spacing_s` > 0, never two rows of one
        recipient within that many seconds, across campaigns and workers: a row whose recipient
        was claimed more recently is deferred (`retry_at`), not claimed and not failed.

        `tiers` maps a campaign id to the daily tier its number sends under: the claim takes at
        most what is left of it (reached in 24 h and rows in flight counted), and a campaign whose
        tier has nothing left claims nothing. Claims for one business portfolio are serialised by
        a transaction lock taken before the count, so workers never overshoot a tier together.

        `senders` maps a campaign id to the number that will send its rows; the claimed rows
        record it, so rows in flight count against that number's tier.
        """
        if not campaign_ids or limit <= 0:
            return []
        send_map = dict(senders or {})
        rest = (float(lease_s), owner, float(pair_spacing_s), list(send_map), list(send_map.values()))
        budgets = {cid: t for cid, t in (tiers or {}).items() if cid in campaign_ids}
        if not budgets:
            return claimed_rows(await self.db.fetch(QUERIES["claim_batch"], list(campaign_ids), limit, *rest))
        async with self.db.transaction() as conn:
            await conn.fetchval(_LOCK_TIERS, sorted({t.number for t in budgets.values()}))
            left: dict[TierBudget, int] = {}
            for t in set(budgets.values()):
                usage = await tier_usage(conn, t.number, t.limit, default_number=t.default_number)
                left[t] = usage.remaining or 0
            ids = [cid for cid in campaign_ids if cid not in budgets or left[budgets[cid]] > 0]
            limit = min([limit, *(left[budgets[cid]] for cid in ids if cid in budgets)])
            if not ids or limit <= 0:
                return []
            return claimed_rows(await conn.fetch(QUERIES["claim_batch"], ids, limit, *rest))

    async def record_results(self, outcomes: Sequence[Outcome], *, owner: str,
                             pair_spacing_s: float = 0.0) -> int:
        """Write a batch of outcomes in one statement; returns how many rows changed. With
        `pair_spacing_s` > 0 their recipients may be claimed again that many seconds from now."""
        if not outcomes:
            return 0
        cols: tuple[list[Any], ...] = ([], [], [], [], [], [], [], [], [])
        for o in outcomes:
            for col, value in zip(cols, (o.id, o.state, o.wamid, o.code, o.title, o.attempt_inc,
                                         o.retry_at, o.skip_reason, o.number), strict=True):
                col.append(value)
        status = await self.db.execute(QUERIES["record_results"], *cols[:8], owner, cols[8],
                                       float(pair_spacing_s))
        return int(status.split()[-1])

    async def release_claims(self, ids: Sequence[int], *, owner: str) -> None:
        if ids:
            await self.db.execute(QUERIES["release_claims"], list(ids), owner)

    async def expire_leases(self, campaign_ids: Sequence[int]) -> int:
        """Turn expired claims into `unknown`, then apply each campaign's grace policy."""
        if not campaign_ids:
            return 0
        ids = list(campaign_ids)
        status = await self.db.execute(QUERIES["expire_leases"], ids)
        await self.db.execute(QUERIES["free_spacing_slots"])
        await self.db.execute(QUERIES["resolve_unknown_resend"], ids)
        await self.db.execute(QUERIES["resolve_unknown_fail"], ids)
        return int(status.split()[-1])

    async def counts(self, campaign_id: int) -> CampaignCounts:
        rows = await self.db.fetch(QUERIES["campaign_counts"], campaign_id)
        return CampaignCounts({r["state"]: r["n"] for r in rows})

    async def next_retry_at(self, campaign_ids: Sequence[int]) -> datetime | None:
        return await self.db.fetchval(QUERIES["next_retry_at"], list(campaign_ids))

    async def complete_if_settled(self, campaign_id: int) -> bool:
        """running → completed iff no row is unsettled. True when this call completed it."""
        return await self.db.fetchval(QUERIES["complete_campaign"], campaign_id) is not None
