"""Running campaigns: the foreground `campaign launch` and the long-running `broadcaster worker`.

One campaign's life here: pre-flight (compile the template, refuse on problems), hand its rows to
the dispatcher, trip the circuit breaker into a pause, and mark it completed once the ledger has no
unsettled row. Every durable decision is a row in Postgres; nothing worker-local decides anything
that survives the process.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import trio

from broadcaster import metrics
from broadcaster.campaigns import Campaign, compile_for, get_campaign_by_id, pause_by_id
from broadcaster.config import Settings
from broadcaster.db import Database, open_db
from broadcaster.dispatch import CampaignSlot, DispatchConfig, Dispatcher
from broadcaster.errors import BroadcasterError, ConfigError
from broadcaster.health import GuardMonitor
from broadcaster.inbox.slack import SlackConfig
from broadcaster.ledger import LedgerStore, TierBudget
from broadcaster.limits import PgSlotStore
from broadcaster.numbers import TierUsage, sending_rate, tier_usage, workspace_numbers
from broadcaster.sql import QUERIES
from broadcaster.transport import CloudApiTransport, TransportConfig
from ratelimit import AimdController, PacedLimiter

log = logging.getLogger("broadcaster.campaign_run")

DEFAULT_MPS = 80
NUMBERS_REFRESH_S = 5.0  # a worker re-reads its numbers' mps/tier/quality this often
MAX_PACED_MPS = 10_000   # above this (benchmarks' "limiter open") nothing is paced at all


class _OpenLimiter:
    """No limit: benchmarks and tests that open the limiter wide (a real number is ≤ 1,000/s)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate

    def set_rate(self, rate: float) -> None:
        self.rate = rate

    async def take(self, n: int = 1) -> None:
        await trio.lowlevel.checkpoint()


def worker_id() -> str:
    """Who holds a lease: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class _Number:
    """One sender number's live limiter state in this process."""

    phone_number_id: str
    mps: float
    bucket: PacedLimiter | _OpenLimiter
    aimd: AimdController
    transport: CloudApiTransport
    tier: int | None               # unique recipients per rolling 24 h; None = unlimited
    quality: str = "GREEN"         # WhatsApp's quality rating of the number (sender_numbers.quality)


@dataclass
class RunOptions:
    dispatch: DispatchConfig = field(default_factory=DispatchConfig)
    mps_override: float | None = None   # e.g. benchmarks with the limiter opened wide
    only_campaign: int | None = None    # foreground launch: this campaign only, stop when it stops
    read_timeout_s: float = 15.0        # past this an answer is given up on and the row is `unknown`


class CampaignRunner:
    """Feeds the dispatcher the running campaigns, with a limiter and transport per sender number."""

    def __init__(self, db: Database, settings: Settings, options: RunOptions) -> None:
        self.db = db
        self.settings = settings
        self.options = options
        self.ledger = LedgerStore(db)
        self.slots = PgSlotStore(db)
        self.owner = worker_id()
        self._numbers: dict[str, _Number] = {}
        self._numbers_read_at = 0.0
        self._workspace_numbers: dict[str, tuple[float, list[str]]] = {}  # workspace → (read at, numbers)
        self._compiled: dict[int, tuple[Any, Campaign]] = {}
        # health guards (opt-out / failure spikes): evaluated every few seconds from the claim cycle
        self.guards = GuardMonitor(
            db, slack=SlackConfig(settings.slack_webhook_url) if settings.slack_webhook_url else None,
            default_number=settings.whatsapp_phone_number_id)
        self.dispatcher = Dispatcher(
            self.ledger, self._open_lane, campaigns=self._campaigns, owner=self.owner,
            config=replace(options.dispatch, pair_spacing_s=settings.pair_spacing_s),
            on_halt=self._on_halt, on_idle=self._on_idle)

    def _open_lane(self, phone_number_id: str) -> Any:
        return self._numbers[phone_number_id].transport.open_lane()

    async def _number(self, phone_number_id: str | None) -> _Number:
        pid = phone_number_id or self.settings.whatsapp_phone_number_id
        if not pid:
            raise ConfigError("no sender number: `broadcaster numbers add PHONE_NUMBER_ID --workspace W` for the "
                              "campaign's workspace, or set WHATSAPP_PHONE_NUMBER_ID")
        num = self._numbers.get(pid)
        if num is None:
            row = await self.db.fetchrow("SELECT mps, tier, quality FROM sender_numbers WHERE phone_number_id = $1",
                                         pid)
            mps = float(self.options.mps_override or (row["mps"] if row else DEFAULT_MPS))
            tier = row["tier"] if row else None
            aimd = AimdController(ceiling=mps)
            # workers share the number's rate as a schedule of send slots in Postgres: no 1-s
            # window at the provider goes over the ceiling, whichever worker sends
            bucket: PacedLimiter | _OpenLimiter = (
                PacedLimiter(self.slots, f"mps:{pid}", sending_rate(mps)) if mps <= MAX_PACED_MPS
                else _OpenLimiter(mps))
            transport = CloudApiTransport(
                TransportConfig(api_url=self.settings.whatsapp_api_url, token=self.settings.whatsapp_token,
                                read_timeout_s=self.options.read_timeout_s),
                pid)
            num = _Number(pid, mps, bucket, aimd, transport, tier)
            num.quality = row["quality"] if row else "GREEN"
            metrics.set_limiter_rate(pid, mps, mps)
            self._numbers[pid] = num
        return num

    async def _refresh_numbers(self) -> None:
        """Pick up `numbers set` and quality/tier webhooks in a running worker (at most every 5 s)."""
        now = trio.current_time()
        if not self._numbers or now - self._numbers_read_at < NUMBERS_REFRESH_S:
            return
        self._numbers_read_at = now
        rows = await self.db.fetch("SELECT phone_number_id, mps, tier, quality FROM sender_numbers"
                                   " WHERE phone_number_id = ANY($1::text[])", list(self._numbers))
        for r in rows:
            num = self._numbers[r["phone_number_id"]]
            num.tier, num.quality = r["tier"], r["quality"]
            if self.options.mps_override is None and float(r["mps"]) != num.mps:
                num.mps = float(r["mps"])
                num.aimd = AimdController(ceiling=num.mps)
                metrics.set_limiter_rate(num.phone_number_id, num.mps, num.mps)

    async def _campaigns(self) -> list[CampaignSlot]:
        await self._refresh_numbers()
        rows = await self.db.fetch(QUERIES["running_campaigns"])
        # a campaign a guard pauses now is left out of this very claim
        tripped = await self.guards.check([r["id"] for r in rows if self.options.only_campaign in (None, r["id"])])
        slots = []
        for r in rows:
            if self.options.only_campaign is not None and r["id"] != self.options.only_campaign:
                continue
            if r["id"] in tripped:
                continue
            cached = self._compiled.get(r["id"])
            if cached is None:
                campaign = await get_campaign_by_id(self.db, r["id"])
                try:
                    compiled, _category = await compile_for(self.db, campaign)
                except BroadcasterError as exc:
                    log.error("preflight campaign=%s failed: %s", campaign.name, exc)
                    await pause_by_id(self.db, campaign.id, reason="preflight_failed",
                                      detail={"error": str(exc)})
                    continue
                cached = (compiled, campaign)
                self._compiled[r["id"]] = cached
            compiled, campaign = cached
            try:
                chosen = await self._choose_number(campaign)
            except ConfigError as exc:
                # this campaign cannot send from anywhere; the worker goes on with the others
                log.error("campaign=%s cannot send: %s", campaign.name, exc)
                await pause_by_id(self.db, campaign.id, reason="no_sender_number", detail={"error": str(exc)})
                continue
            if chosen is None:
                continue
            num, tier = chosen
            slot = CampaignSlot(
                id=campaign.id, name=campaign.name, compiled=compiled, limiter=_AimdLimiter(num),
                number=num.phone_number_id, tier=tier, template=campaign.template_name,
                on_throttle=lambda retry_after, n=num: _throttled(n, retry_after),
                on_success=lambda n=num: _succeeded(n))
            slots.append(slot)
        active_ids = {s.id for s in slots}
        for cid in list(self._compiled):
            if cid not in active_ids:
                del self._compiled[cid]  # paused/finished: recompile (pre-flight again) on resume
        return slots

    async def _choose_number(self, campaign: Campaign) -> tuple[_Number, TierBudget | None] | None:
        """The number this campaign sends from now, and the daily tier its claims must keep within.

        A pool is tried in order: the first number with daily tier budget left (and, when
        another is available, not rated RED) sends; when every number's tier is used up the
        campaign pauses with `tier_exhausted` and the earliest time one frees up. A recipient is
        one ledger row, so whichever number sends it, it is sent once.
        """
        pool = await self._pool(campaign)
        exhausted: list[TierUsage] = []
        candidates = []
        for pid in pool or [""]:
            num = await self._number(pid or None)  # none at all: ConfigError naming what to do
            candidates.append(num)
        if len(candidates) > 1:
            candidates.sort(key=lambda n: n.quality == "RED")  # stable: pool order among equals
        for num in candidates:
            if num.tier is None:
                return num, None
            usage = await tier_usage(self.db, num.phone_number_id, num.tier,
                                     default_number=self.settings.whatsapp_phone_number_id)
            metrics.set_tier_budget(num.phone_number_id, usage.limit, usage.remaining)
            if not usage.exhausted:
                # the claim re-counts under the portfolio's lock: with rows in flight holding what
                # is left, it claims nothing and lets them land
                return num, TierBudget(num.phone_number_id, num.tier, self.settings.whatsapp_phone_number_id)
            exhausted.append(usage)
        soonest = min(exhausted, key=lambda u: u.oldest_at or campaign.created_at)
        await self._pause_tier(campaign, soonest)
        return None

    async def _pool(self, campaign: Campaign) -> list[str]:
        """numbers.sender_pool, with a workspace's own numbers re-read at most every 5 s."""
        if campaign.number_pool or campaign.phone_number_id:
            return list(campaign.number_pool) or [campaign.phone_number_id or ""]
        now = trio.current_time()
        cached = self._workspace_numbers.get(campaign.workspace)
        if cached is None or now - cached[0] >= NUMBERS_REFRESH_S:
            cached = self._workspace_numbers[campaign.workspace] = (
                now, await workspace_numbers(self.db, campaign.workspace))
        default = self.settings.whatsapp_phone_number_id
        return list(cached[1]) or ([default] if default else [])

    async def _pause_tier(self, campaign: Campaign, usage: TierUsage) -> None:
        resume_at = usage.oldest_at + timedelta(hours=24) if usage.oldest_at else None
        detail = {"tier": usage.limit, "reached_24h": usage.reached,
                  "resume_at": resume_at.isoformat() if resume_at else None}
        if await pause_by_id(self.db, campaign.id, reason="tier_exhausted", detail=detail):
            log.warning("tier_exhausted campaign=%s tier=%s reached=%s resume_at=%s", campaign.name,
                        usage.limit, usage.reached, detail["resume_at"])

    async def _on_halt(self, campaign_id: int, code: int | None, title: str) -> None:
        reason = f"circuit_breaker:{code if code is not None else 'unreachable'}"
        if await pause_by_id(self.db, campaign_id, reason=reason,
                             detail={"code": code, "title": title}):
            metrics.record_campaign_state("paused")

    async def _on_idle(self, campaign_ids: list[int]) -> None:
        for cid in campaign_ids:
            if await self.ledger.complete_if_settled(cid):
                metrics.record_campaign_state("completed")
                log.info("campaign_completed id=%s", cid)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send until stopped (worker) or until no campaign is left (foreground launch)."""
        # Slot reservations get their own small pool without synchronous commit: the schedule need not
        # survive a Postgres crash, and a WAL flush per reservation would cost ~5 ms.
        async with open_db(self.db.dsn, max_size=2, server_settings={"synchronous_commit": "off"}) as slots_db:
            self.slots.db = slots_db
            try:
                await self.dispatcher.run(task_status=task_status)
            finally:
                self.slots.db = self.db
                await self.guards.aclose()

    def stop(self) -> None:
        self.dispatcher.stop()


class _AimdLimiter:
    """The number's shared bucket, re-rated by its AIMD controller before each take."""

    def __init__(self, num: _Number) -> None:
        self.num = num

    async def take(self, n: int = 1) -> None:
        num = self.num
        hold = num.aimd.hold_until
        if hold is not None and hold > trio.current_time():
            await trio.sleep_until(hold)
        rate = sending_rate(num.aimd.current_rate())
        if abs(rate - num.bucket.rate) > 1e-9:
            num.bucket.set_rate(rate)
            metrics.set_limiter_rate(num.phone_number_id, num.mps, rate)
        t0 = trio.current_time()
        await num.bucket.take(n)
        waited = trio.current_time() - t0
        if waited > 0.0005:
            metrics.record_limiter_wait(num.phone_number_id, waited)


def _throttled(num: _Number, retry_after: float | None) -> None:
    num.aimd.on_throttle(retry_after)


def _succeeded(num: _Number) -> None:
    num.aimd.on_success()
