"""Sender numbers (WhatsApp phone_number_id) and their budgets: messages/s and the daily tier.

The tier counts unique recipients reached in a rolling 24 h per business portfolio, as Meta does
since Oct 2025: every number of a portfolio (`numbers add --portfolio`, default 'default') draws on
one budget. Rows in flight (claimed, or unknown: perhaps sent) count too, and workers claim for a
tiered portfolio one at a time (`LedgerStore.claim_batch` with `tiers`), so several workers can
never overshoot it together.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from datetime import datetime

from broadcaster.db import Connection, Database, UniqueViolation
from broadcaster.errors import NotFoundError, StateError, UsageError
from broadcaster.sql import QUERIES

MAX_MPS = 1000
TIER_NAMES = {"250": 250, "2k": 2000, "10k": 10_000, "100k": 100_000, "unlimited": None}


SAFETY_SHARE = 0.98  # send at 98% of the ceiling: arrival jitter must not push a 1-s window over it


def sending_rate(mps: float) -> float:
    """The paced rate for a number whose ceiling is `mps`: 80 → 78.4, 200 → 196, 1000 → 980.

    Workers share it as a schedule of send slots (ratelimit.PacedLimiter), so there is no burst;
    the send plan's ETA uses the same rate.
    """
    return max(0.5, SAFETY_SHARE * mps)


@dataclass(frozen=True)
class SenderNumber:
    phone_number_id: str
    workspace: str
    mps: int
    tier: int | None
    quality: str
    portfolio: str = "default"


def parse_tier(value: str) -> int | None:
    """'250', '2000', '2k', '100k', 'unlimited' → unique recipients per 24 h (None = unlimited)."""
    v = value.strip().lower()
    if v in TIER_NAMES:
        return TIER_NAMES[v]
    if v.isdigit() and int(v) > 0:
        return int(v)
    raise UsageError(f"--tier {value!r}: expected a positive number, 250, 2k, 10k, 100k or unlimited")


def check_mps(mps: int) -> int:
    if not 1 <= mps <= MAX_MPS:
        raise UsageError(f"--mps {mps}: must be between 1 and {MAX_MPS} messages per second")
    return mps


def check_portfolio(portfolio: str) -> str:
    value = portfolio.strip()
    if not value or len(value) > 100:
        raise UsageError(f"--portfolio {portfolio!r}: give the business portfolio's name or id (1-100 characters)")
    return value


def check_phone_number_id(value: str) -> str:
    """A WhatsApp phone_number_id is the Graph object id of a number (digits, e.g. 106540352242922),
    not the phone number itself; a '+', spaces or dashes mean someone pasted the number."""
    pid = value.strip()
    if not pid:
        raise UsageError("PHONE_NUMBER_ID is empty: give the number's id from WhatsApp Manager "
                         "(API Setup → Phone number ID)")
    if not (pid.isdigit() and pid.isascii() and 5 <= len(pid) <= 25):
        hint = (" — that looks like the phone number itself; the id is a different string of digits"
                if any(c in pid for c in "+ -()") else "")
        raise UsageError(f"PHONE_NUMBER_ID {value!r} is not a phone_number_id (5-25 digits){hint}: "
                         "see WhatsApp Manager → API Setup → Phone number ID")
    return pid


async def check_workspace(db: Database | Connection, workspace: str) -> str:
    """The workspace, if it exists; else NotFoundError naming the closest existing one."""
    name = workspace.strip()
    if name and await db.fetchval("SELECT 1 FROM workspaces WHERE name = $1", name):
        return name
    known = [r["name"] for r in await db.fetch("SELECT name FROM workspaces ORDER BY name")]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else (f"; known: {', '.join(known)}" if known else "")
    raise NotFoundError(f"workspace '{workspace}' does not exist{hint}: workspaces are created by "
                        f"`broadcaster contacts import FILE --workspace {workspace}`")


async def workspace_numbers(db: Database | Connection, workspace: str) -> list[str]:
    """The workspace's own sender numbers, in the order they were added."""
    rows = await db.fetch("SELECT phone_number_id FROM sender_numbers WHERE workspace = $1"
                          " ORDER BY created_at, phone_number_id", workspace)
    return [r["phone_number_id"] for r in rows]


async def sender_pool(db: Database | Connection, *, workspace: str, phone_number_id: str | None,
                      number_pool: list[str] | tuple[str, ...], default_number: str | None) -> list[str]:
    """The numbers a campaign sends from, in order of preference: its own pool, else its number,
    else its workspace's numbers (each workspace sends from its own), else the deployment's
    default (WHATSAPP_PHONE_NUMBER_ID). Empty when there is none."""
    if number_pool:
        return list(number_pool)
    if phone_number_id:
        return [phone_number_id]
    own = await workspace_numbers(db, workspace)
    if own:
        return own
    return [default_number] if default_number else []


async def check_campaign_numbers(db: Database | Connection, numbers: list[str], *, workspace: str,
                                 default_number: str | None) -> list[str]:
    """Numbers given to `campaign create --number`: each configured for this workspace, or the
    deployment's default number. A typo is refused here, not found at the first send."""
    checked = []
    for raw in numbers:
        pid = check_phone_number_id(raw)
        row = await db.fetchrow("SELECT workspace FROM sender_numbers WHERE phone_number_id = $1", pid)
        if row is None and pid != default_number:
            raise NotFoundError(f"--number {pid} is not configured: `broadcaster numbers add {pid} "
                                f"--workspace {workspace}` first (or set WHATSAPP_PHONE_NUMBER_ID to it)")
        if row is not None and row["workspace"] != workspace:
            raise UsageError(f"--number {pid} belongs to workspace '{row['workspace']}', the campaign's "
                             f"segment to '{workspace}': each workspace sends from its own numbers")
        checked.append(pid)
    return checked


async def add_number(db: Database, phone_number_id: str, *, workspace: str, mps: int = 80,
                     tier: int | None = None, portfolio: str = "default") -> SenderNumber:
    """Register a sender number for an existing workspace."""
    phone_number_id = check_phone_number_id(phone_number_id)
    check_mps(mps)
    portfolio = check_portfolio(portfolio)
    workspace = await check_workspace(db, workspace)
    try:
        await db.execute(
            "INSERT INTO sender_numbers (phone_number_id, workspace, mps, tier, portfolio)"
            " VALUES ($1, $2, $3, $4, $5)", phone_number_id, workspace, mps, tier, portfolio)
    except UniqueViolation as exc:
        raise StateError(f"number {phone_number_id} already exists: change it with "
                         f"`broadcaster numbers set {phone_number_id} --mps N`") from exc
    return await get_number(db, phone_number_id)


async def get_number(db: Database, phone_number_id: str) -> SenderNumber:
    row = await db.fetchrow(
        "SELECT phone_number_id, workspace, mps, tier, quality, portfolio FROM sender_numbers"
        " WHERE phone_number_id = $1",
        phone_number_id)
    if row is None:
        raise NotFoundError(f"number {phone_number_id} is not configured: "
                            f"`broadcaster numbers add {phone_number_id} --workspace W`")
    return SenderNumber(**dict(row))


async def set_number(db: Database, phone_number_id: str, *, mps: int | None = None,
                     tier: int | None | str = "keep", portfolio: str | None = None) -> SenderNumber:
    await get_number(db, phone_number_id)
    if portfolio is not None:
        await db.execute("UPDATE sender_numbers SET portfolio = $2 WHERE phone_number_id = $1", phone_number_id,
                         check_portfolio(portfolio))
    if mps is not None:
        check_mps(mps)
        from broadcaster.health import mps_for_quality

        # the configured ceiling; while WhatsApp rates the number down, the rate in use stays lower
        await db.execute(
            "UPDATE sender_numbers SET mps_ceiling = CASE WHEN mps_ceiling IS NULL THEN NULL ELSE $2::int END,"
            " mps = CASE WHEN mps_ceiling IS NULL THEN $2::int ELSE $3::int END WHERE phone_number_id = $1",
            phone_number_id, mps, mps_for_quality(mps, (await get_number(db, phone_number_id)).quality))
    if tier != "keep":
        await db.execute("UPDATE sender_numbers SET tier = $2 WHERE phone_number_id = $1", phone_number_id, tier)
    return await get_number(db, phone_number_id)


async def list_numbers(db: Database) -> list[SenderNumber]:
    rows = await db.fetch("SELECT phone_number_id, workspace, mps, tier, quality, portfolio FROM sender_numbers"
                          " ORDER BY 1")
    return [SenderNumber(**dict(r)) for r in rows]


@dataclass(frozen=True)
class TierUsage:
    limit: int | None
    reached: int                    # unique recipients accepted from the number's portfolio in 24 h
    in_flight: int                  # rows claimed right now by campaigns that may send from it
    oldest_at: datetime | None      # oldest first-contact in the window: budget frees up 24 h after it

    @property
    def remaining(self) -> int | None:
        """Rows that may still be claimed now (in-flight rows already hold their share)."""
        return None if self.limit is None else max(0, self.limit - self.reached - self.in_flight)

    @property
    def exhausted(self) -> bool:
        """Used up for good (until the window moves): nothing left and nothing in flight."""
        return self.limit is not None and self.reached >= self.limit


async def tier_usage(db: Database | Connection, phone_number_id: str, limit: int | None, *,
                     default_number: str | None) -> TierUsage:
    """Unique recipients reached in the rolling 24 h from any number of this number's business
    portfolio, and rows in flight (claimed, or unknown: perhaps sent) for campaigns that may send
    from one of them, in one query whose cost does not grow with the ledger (`portfolio_reach`).
    `default_number` (WHATSAPP_PHONE_NUMBER_ID) sends for campaigns without a number. Conservative:
    in-flight rows of a pool campaign count against every portfolio of its pool."""
    if limit is None:
        return TierUsage(None, 0, 0, None)
    row = await db.fetchrow(QUERIES["tier_usage"], phone_number_id, default_number)
    return TierUsage(limit, int(row["reached"]), int(row["in_flight"]), row["oldest"])
