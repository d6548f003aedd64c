"""The dispatch pipeline: claim → render → limit → send → record. What runs, not one campaign's life
(that is campaign_run.py).

    claimer ──jobs (bounded)──▶ N sender lanes ──outcomes (bounded)──▶ writer
       │  claim_batch (1 round trip / batch)        │ limiter, POST       │ record_results (1 / batch)
       └─ expire leases, complete campaigns         │                     └─ circuit breaker, AIMD

What it needs from outside, as two small protocols: the ledger store (batch calls only) and the
transport (one lane per sender task).

Guarantees:
- never sends a ledger row twice on its own: a row is claimed once, and a row whose outcome is
  unknown (timeout, connection lost after the request left) is recorded `unknown`, not retried;
- throttling (130429, 131056, 429, …) is never a failure: the row is deferred and its attempt
  budget is not consumed;
- stopping (SIGINT/SIGTERM → `stop()`) means: stop claiming, give back rows not yet handed to a
  lane, let in-flight requests finish, write every outcome, return.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import trio

from broadcaster import metrics
from broadcaster.classify import title_for
from broadcaster.db import DatabaseUnavailable
from broadcaster.errors import (
    CampaignHaltError,
    OutcomeUnknown,
    PermanentSendError,
    ProviderUnreachable,
    ThrottledError,
    TransientSendError,
)
from broadcaster.ledger import ClaimedRow, Outcome, TierBudget, callback_data
from broadcaster.logs import mask_phone
from broadcaster.transport import SendResult
from ratelimit import backoff_131056
from templates import CompiledCampaign, Skip, build_message

log = logging.getLogger("broadcaster.dispatch")

DB_RETRY_BASE_S = 0.25  # Postgres unreachable: retry after 0.5, 1, 2, 4, 8, 10, 10 … s
DB_RETRY_MAX_S = 10.0
HANDOUT_SLICE = 25      # rows rendered and handed out between two yields to the scheduler (≈ 0.3 ms)


class LedgerPort(Protocol):
    async def claim_batch(self, campaign_ids: Sequence[int], limit: int, *, lease_s: float,
                          owner: str, pair_spacing_s: float = 0.0,
                          tiers: Mapping[int, TierBudget] | None = None,
                          senders: Mapping[int, str] | None = None) -> list[ClaimedRow]: ...
    async def record_results(self, outcomes: Sequence[Outcome], *, owner: str,
                             pair_spacing_s: float = 0.0) -> int: ...
    async def release_claims(self, ids: Sequence[int], *, owner: str) -> None: ...
    async def expire_leases(self, campaign_ids: Sequence[int]) -> int: ...


class LanePort(Protocol):
    async def send(self, body: bytes) -> SendResult: ...
    async def aclose(self) -> None: ...


class RateLimiter(Protocol):
    """The per-number messages/s budget (see ratelimit.PacedLimiter)."""

    async def take(self, n: int = 1) -> None: ...


@dataclass(frozen=True)
class DispatchConfig:
    lanes: int = 32                  # concurrent sender lanes (one connection each)
    batch_size: int = 200            # rows per claim round trip
    lease_s: float = 120.0           # a claimed row not recorded within this becomes `unknown`
    max_attempts: int = 5            # transient failures before `failed`
    backoff_base_s: float = 2.0      # transient retry: base·2^(attempt-1) with full jitter, capped
    backoff_cap_s: float = 300.0
    throttle_defer_s: float = 1.0    # a throttled row waits at least this (or Retry-After)
    flush_interval_s: float = 0.1    # the writer flushes at least this often
    idle_poll_s: float = 0.5         # with nothing to claim, look again after this (other processes add work)
    lease_sweep_s: float = 5.0       # how often expired leases and the unknown grace policy are applied
    halt_threshold: int = 3          # campaign-level errors before the circuit breaker pauses it
    unreachable_threshold: int = 20  # connect failures in a row before the breaker pauses it
    pair_spacing_s: float = 6.0      # at most one message per recipient in this many seconds (0: off)
    send_margin_s: float = 30.0      # a send starts only while its lease has this long left (capped at lease_s/2)

    def __post_init__(self) -> None:
        for name in ("lanes", "batch_size", "max_attempts", "halt_threshold"):
            if getattr(self, name) < 1:
                raise ValueError(f"DispatchConfig.{name} must be at least 1")
        if not 0 <= self.pair_spacing_s <= 3600:
            raise ValueError(f"DispatchConfig.pair_spacing_s must be 0 to 3600 s, got {self.pair_spacing_s}")


def transient_retry_at(now: datetime, attempt: int, cfg: DispatchConfig, rng: random.Random) -> datetime:
    """When a transiently failed row may be tried again: full jitter over base·2^(attempt-1).

    attempt 1 → up to 2 s, 2 → up to 4 s, 3 → up to 8 s, … capped at backoff_cap_s.
    """
    ceiling = min(cfg.backoff_cap_s, cfg.backoff_base_s * (2 ** max(0, attempt - 1)))
    return now + timedelta(seconds=rng.uniform(ceiling / 2, ceiling))


_METRIC_OUTCOME = {"accepted": "accepted", "failed": "permanent_error", "unknown": "unknown",
                   "halt": "halted", "pending": "transient_error"}


@dataclass
class Breaker:
    """One campaign's circuit-breaker state. It outlives slot refreshes (the claimer carries it
    over to the new slot), so an error a lane counts on an older slot is never lost."""

    active: bool = True
    halt_errors: int = 0
    halt_reported: bool = False
    unreachable: int = 0            # connect failures in a row (reset by any accepted send)


@dataclass
class CampaignSlot:
    """What the pipeline holds for one running campaign."""

    id: int
    name: str
    compiled: CompiledCampaign
    limiter: RateLimiter
    number: str                     # sender phone_number_id: lanes keep one connection per number
    template: str = ""              # template name, a metrics label
    tier: TierBudget | None = None  # the daily tier its number sends under (None: unlimited)
    on_throttle: Callable[[float | None], None] = lambda retry_after: None
    on_success: Callable[[], None] = lambda: None
    breaker: Breaker = field(default_factory=Breaker)

    @property
    def active(self) -> bool:
        return self.breaker.active


@dataclass
class _Job:
    row: ClaimedRow
    body: bytes
    start_by: float  # trio clock: past this the lease may run out mid-send, so the row goes back unsent


@dataclass
class DispatchStatistics:
    claimed: int = 0
    sent_requests: int = 0
    lease_returns: int = 0  # rows given back unsent because their lease was about to end
    outcomes: dict[str, int] = field(default_factory=dict)


class Dispatcher:
    """Sends the claimable rows of a set of campaigns until stopped or until `campaigns()` is empty.

    `campaigns` is a callback returning the current running campaigns (refreshed every claim
    cycle), `on_halt(campaign_id, code, title)` is called once when the circuit breaker trips.
    """

    def __init__(self, ledger: LedgerPort, open_lane: Callable[[str], LanePort], *,
                 campaigns: Callable[[], Any], owner: str, config: DispatchConfig | None = None,
                 on_halt: Callable[[int, int | None, str], Any] | None = None,
                 on_idle: Callable[[Sequence[int]], Any] | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 rng: random.Random | None = None) -> None:
        self.ledger = ledger
        self.open_lane = open_lane
        self.campaigns = campaigns
        self.owner = owner
        self.cfg = config or DispatchConfig()
        self.on_halt = on_halt
        self.on_idle = on_idle
        self.clock = clock
        self.rng = rng or random.Random()
        self.stats = DispatchStatistics()
        self._slots: dict[int, CampaignSlot] = {}
        self._stop = trio.Event()
        self._last_sweep = -1e9
        self._flushed = trio.Event()  # set (and replaced) after every writer flush
        self.stay_idle = False  # a worker waits for campaigns; a foreground launch returns when none is left

    def stop(self) -> None:
        """Request a clean stop: no new claims; in-flight work is finished and recorded."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """True once `stop()` was called."""
        return self._stop.is_set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until stopped, or until no campaign is left to send for. Never loses an outcome."""
        # room for a whole claimed batch beyond what the lanes hold: the next claim round trip
        # overlaps with sending this batch, so a slow Postgres does not starve the lanes (a row
        # that waits too long for the limiter goes back unsent: see _Job.start_by)
        jobs_send, jobs_recv = trio.open_memory_channel[_Job](self.cfg.lanes * 2 + self.cfg.batch_size)
        out_send, out_recv = trio.open_memory_channel[Outcome](self.cfg.batch_size * 2)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer, out_recv)
            async with out_send:
                async with trio.open_nursery() as lanes:
                    for _ in range(self.cfg.lanes):
                        lanes.start_soon(self._lane, jobs_recv.clone(), out_send.clone())
                    jobs_recv.close()
                    task_status.started()
                    await self._claimer(jobs_send, out_send)

    # ---- claimer -------------------------------------------------------------------------

    async def _claimer(self, jobs: trio.MemorySendChannel[_Job],
                       outcomes: trio.MemorySendChannel[Outcome]) -> None:
        """Claim, render and hand out rows until stopped (or, in the foreground, until no campaign
        is left). Postgres going away pauses it: it retries with backoff and carries on."""
        async with jobs:
            outage = 0
            while not self._stop.is_set():
                try:
                    if not await self._claim_cycle(jobs, outcomes):
                        return
                    outage = 0
                except DatabaseUnavailable as exc:
                    outage += 1
                    delay = min(DB_RETRY_MAX_S, DB_RETRY_BASE_S * 2 ** min(outage, 6))
                    log.warning("claim_batch database unavailable (attempt %d), retrying in %.1fs: %s",
                                outage, delay, exc)
                    with trio.move_on_after(delay):
                        await self._stop.wait()

    async def _claim_cycle(self, jobs: trio.MemorySendChannel[_Job],
                           outcomes: trio.MemorySendChannel[Outcome]) -> bool:
        """One claim round trip and its hand-out. False when there is nothing left to run for."""
        slots = await self.campaigns()
        for s in slots:  # breaker state lives as long as the campaign stays in the list
            old = self._slots.get(s.id)
            if old is not None:
                s.breaker = old.breaker
        self._slots = {s.id: s for s in slots}
        active = [s.id for s in slots if s.active]
        if not active:
            if not self.stay_idle:
                return False
            with trio.move_on_after(self.cfg.idle_poll_s):
                await self._stop.wait()
            return True
        now_t = trio.current_time()
        if now_t - self._last_sweep >= self.cfg.lease_sweep_s:
            self._last_sweep = now_t
            await self.ledger.expire_leases(active)
        claimable = [s for s in slots if s.active]
        # a campaign whose tier budget is used up or held by rows in flight claims nothing this round
        tiers = {s.id: s.tier for s in claimable if s.tier is not None}
        t0 = trio.current_time()
        start_by = t0 + self.cfg.lease_s - min(self.cfg.send_margin_s, self.cfg.lease_s / 2)
        rows = await self.ledger.claim_batch([s.id for s in claimable], self.cfg.batch_size,
                                             lease_s=self.cfg.lease_s, owner=self.owner,
                                             pair_spacing_s=self.cfg.pair_spacing_s, tiers=tiers or None,
                                             senders={s.id: s.number for s in claimable})
        metrics.observe_claim(trio.current_time() - t0)
        self.stats.claimed += len(rows)
        if not rows:
            if self.on_idle is not None:
                await self.on_idle(active)
            await self._wait_for_work()
            return True
        handed = 0
        try:
            for row in rows:
                slot = self._slots.get(row.campaign_id)
                item = self._render(slot, row, start_by)
                # hand out without a checkpoint per row: `send` yields to the scheduler even when
                # there is room, which would feed the lanes one row per scheduler pass; but yield
                # every HANDOUT_SLICE rows, or rendering a whole batch stalls every lane (≈ 6 ms
                # per 500 rows: at 1,000/s the limiter's send slots would pass unused meanwhile)
                channel: Any = outcomes if isinstance(item, Outcome) else jobs
                try:
                    channel.send_nowait(item)
                except trio.WouldBlock:
                    await channel.send(item)
                handed += 1
                if handed % HANDOUT_SLICE == 0:
                    await trio.lowlevel.checkpoint()
                if self._stop.is_set():
                    break
        finally:
            rest = [r.id for r in rows[handed:]]
            if rest:
                # if this fails too, the rows' lease runs out and they are settled as `unknown`
                with trio.move_on_after(10, shield=True), contextlib.suppress(DatabaseUnavailable):
                    await self.ledger.release_claims(rest, owner=self.owner)
        return True

    async def _wait_for_work(self) -> None:
        """Nothing claimable: wake on our own writer's next flush (rows may have settled or been
        deferred), a stop request, or after idle_poll_s (other processes add work)."""
        flushed = self._flushed
        with trio.move_on_after(self.cfg.idle_poll_s):
            async with trio.open_nursery() as nursery:
                async def wake(ev: trio.Event) -> None:
                    await ev.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(wake, self._stop)
                nursery.start_soon(wake, flushed)

    def _render(self, slot: CampaignSlot | None, row: ClaimedRow, start_by: float) -> _Job | Outcome:
        if slot is None:
            # the campaign stopped meanwhile: give the row back untouched
            return Outcome(row.id, "pending", campaign_id=row.campaign_id)
        result = slot.compiled.render_frozen(row.contact, row.language)
        if isinstance(result, Skip):
            return Outcome(row.id, "skipped", campaign_id=row.campaign_id, skip_reason=result.reason)
        body = build_message(row.wa_id, result.template, callback_data(row.campaign_id, row.id))
        return _Job(row, body, start_by)

    # ---- lanes ---------------------------------------------------------------------------

    async def _lane(self, jobs: trio.MemoryReceiveChannel[_Job],
                    outcomes: trio.MemorySendChannel[Outcome]) -> None:
        lanes: dict[str, LanePort] = {}  # one connection per sender number this task has used
        try:
            async with jobs, outcomes:
                async for job in jobs:
                    slot = self._slots.get(job.row.campaign_id)
                    if self._stop.is_set() or slot is None or not slot.active:
                        await outcomes.send(Outcome(job.row.id, "pending",
                                                    campaign_id=job.row.campaign_id))
                        continue
                    with trio.move_on_at(job.start_by) as waited:
                        await slot.limiter.take(1)
                    if waited.cancelled_caught:
                        # the limiter (throttled, slowed down) would hand a slot so late that the
                        # lease could end mid-send: give the row back unsent; a cancelled waiter
                        # takes no slot, so the rows behind it are not starved
                        self.stats.lease_returns += 1
                        if self.stats.lease_returns == 1:
                            log.warning("dispatch rows waited so long for the rate limiter that their lease"
                                        " could end mid-send; given back unsent (fewer lanes or a smaller"
                                        " --batch-size fit a slow number better)")
                        await outcomes.send(Outcome(job.row.id, "pending", campaign_id=job.row.campaign_id))
                        continue
                    lane = lanes.get(slot.number)
                    if lane is None:
                        lane = lanes[slot.number] = self.open_lane(slot.number)
                    outcome = await self._send_one(lane, slot, job)
                    await outcomes.send(outcome)
        finally:
            with trio.move_on_after(5, shield=True):
                for lane in lanes.values():
                    await lane.aclose()

    async def _send_one(self, lane: LanePort, slot: CampaignSlot, job: _Job) -> Outcome:
        t0 = trio.current_time()
        metrics.LANES_IN_FLIGHT.inc()
        try:
            outcome = await self._send_and_classify(lane, slot, job)
        finally:
            metrics.LANES_IN_FLIGHT.dec()
        if outcome.state == "halt":
            # trip here, not at the next flush: the other lanes must stop sending at once
            slot.breaker.halt_errors += 1
            if slot.breaker.halt_errors >= self.cfg.halt_threshold:
                slot.breaker.active = False
        kind = _METRIC_OUTCOME.get(outcome.state, "transient_error")
        if outcome.state == "pending" and outcome.attempt_inc == 0:
            kind = "throttled"
        metrics.record_send(kind, outcome.code, trio.current_time() - t0, slot.number, slot.template)
        return outcome

    async def _send_and_classify(self, lane: LanePort, slot: CampaignSlot, job: _Job) -> Outcome:
        row = job.row
        now = self.clock()
        self.stats.sent_requests += 1
        try:
            result = await lane.send(job.body)
        except ThrottledError as exc:
            wait = max(self.cfg.throttle_defer_s, exc.retry_after or 0.0)
            if exc.pair:
                # 131056 is about this recipient only: hold the pair (Meta: 4^X s), not the number's rate
                wait = max(wait, backoff_131056(row.attempts))
            else:
                slot.on_throttle(exc.retry_after)
            return Outcome(row.id, "pending", campaign_id=row.campaign_id, retry_at=now + timedelta(seconds=wait))
        except ProviderUnreachable as exc:
            # nothing left this host: no attempt spent; a run of these means the API is unreachable
            slot.breaker.unreachable += 1
            if slot.breaker.unreachable >= self.cfg.unreachable_threshold:
                slot.breaker.active = False  # the other lanes stop now; the writer pauses the campaign
                return Outcome(row.id, "halt", campaign_id=row.campaign_id, title=exc.title)
            return Outcome(row.id, "pending", campaign_id=row.campaign_id, title=exc.title,
                           retry_at=transient_retry_at(now, 1, self.cfg, self.rng))
        except TransientSendError as exc:
            attempt = row.attempts + 1
            if attempt >= self.cfg.max_attempts:
                return Outcome(row.id, "failed", campaign_id=row.campaign_id, code=exc.code,
                               title=exc.title or str(exc)[:200], attempt_inc=1)
            return Outcome(row.id, "pending", campaign_id=row.campaign_id, code=exc.code, title=exc.title,
                           attempt_inc=1, retry_at=transient_retry_at(now, attempt, self.cfg, self.rng))
        except PermanentSendError as exc:
            log.info("send_result campaign=%s to=%s outcome=failed code=%s", slot.name,
                     mask_phone(row.wa_id), exc.code)
            return Outcome(row.id, "failed", campaign_id=row.campaign_id, code=exc.code, title=exc.title, attempt_inc=1)
        except CampaignHaltError as exc:
            return Outcome(row.id, "halt", campaign_id=row.campaign_id, code=exc.code, title=exc.title)
        except OutcomeUnknown as exc:
            log.warning("send_result campaign=%s to=%s outcome=unknown detail=%s", slot.name,
                        mask_phone(row.wa_id), exc)
            # the number is recorded: a status webhook that settles it counts against its tier
            return Outcome(row.id, "unknown", campaign_id=row.campaign_id, attempt_inc=1, number=slot.number)
        except trio.Cancelled:
            raise
        slot.on_success()
        slot.breaker.unreachable = 0
        return Outcome(row.id, "accepted", campaign_id=row.campaign_id, wamid=result.wamid, attempt_inc=1,
                       number=slot.number)

    # ---- writer --------------------------------------------------------------------------

    async def _writer(self, outcomes: trio.MemoryReceiveChannel[Outcome]) -> None:
        """Collect outcomes and write them in batches; trips the circuit breaker."""
        buf: list[Outcome] = []
        async with outcomes:
            while True:
                closed = False
                with trio.move_on_after(self.cfg.flush_interval_s):
                    while len(buf) < self.cfg.batch_size:
                        try:
                            try:  # drain what is there in one step; wait only when it is empty
                                buf.append(outcomes.receive_nowait())
                            except trio.WouldBlock:
                                buf.append(await outcomes.receive())
                        except trio.EndOfChannel:
                            closed = True
                            break
                if buf:
                    batch, buf = buf, []
                    await self._flush_until_written(batch)
                    self._flushed.set()
                    self._flushed = trio.Event()
                if closed:
                    return

    async def _flush_until_written(self, batch: list[Outcome]) -> None:
        """Write a batch of outcomes; while Postgres is away, keep trying (lanes back up behind
        the bounded channel, so sending pauses). Each attempt is shielded: cancellation cannot
        half-write it; only a cancel during the wait between attempts abandons the batch (its
        rows' leases then run out and they become `unknown`)."""
        outage = 0
        while True:
            try:
                with trio.CancelScope(shield=True):
                    await self._flush(batch)
                return
            except DatabaseUnavailable as exc:
                outage += 1
                delay = min(DB_RETRY_MAX_S, DB_RETRY_BASE_S * 2 ** min(outage, 6))
                log.warning("record_results database unavailable (attempt %d, %d outcomes held), "
                            "retrying in %.1fs: %s", outage, len(batch), delay, exc)
                await trio.sleep(delay)

    async def _flush(self, batch: list[Outcome]) -> None:
        halts: dict[int, Outcome] = {}
        to_write: list[Outcome] = []
        release: list[int] = []
        for o in batch:
            self.stats.outcomes[o.state] = self.stats.outcomes.get(o.state, 0) + 1
            if o.state == "halt":
                # the row is not burnt: it goes back to pending, untouched
                release.append(o.id)
                halts[o.id] = o
            elif o.state == "pending" and o.retry_at is None and o.attempt_inc == 0:
                release.append(o.id)
            else:
                to_write.append(o)
        t0 = trio.current_time()
        await self.ledger.record_results(to_write, owner=self.owner, pair_spacing_s=self.cfg.pair_spacing_s)
        await self.ledger.release_claims(release, owner=self.owner)
        metrics.observe_write(trio.current_time() - t0)
        if halts:
            await self._trip_breaker(halts)

    async def _trip_breaker(self, halts: dict[int, Outcome]) -> None:
        """Report each campaign whose lanes tripped the breaker, once (the pause is durable)."""
        for o in halts.values():
            slot = self._slots.get(o.campaign_id)
            if slot is None or slot.active or slot.breaker.halt_reported:
                continue
            slot.breaker.halt_reported = True
            metrics.record_circuit_breaker_trip(o.code)
            log.error("circuit_breaker campaign=%s code=%s title=%s", slot.name, o.code,
                      o.title or title_for(o.code))
            if self.on_halt is not None:
                await self.on_halt(slot.id, o.code, o.title or title_for(o.code))
