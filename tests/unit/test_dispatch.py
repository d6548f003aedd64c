"""The dispatch pipeline's decisions, with an in-memory ledger and scripted lanes (no socket, no DB).

Time: trio's autojump clock; the ledger's wall clock is derived from it so deferred rows come due.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
import trio

from broadcaster.db import DatabaseUnavailable
from broadcaster.dispatch import CampaignSlot, DispatchConfig, Dispatcher
from broadcaster.errors import (
    CampaignHaltError,
    OutcomeUnknown,
    PermanentSendError,
    ThrottledError,
    TransientSendError,
)
from broadcaster.ledger import ClaimedRow, Outcome
from broadcaster.transport import SendResult
from templates import compile_campaign, parse_message_templates

EPOCH = datetime(2026, 12, 3, tzinfo=UTC)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def now() -> datetime:
    return EPOCH + timedelta(seconds=trio.current_time())


class MemoryLedger:
    """The ledger's batch contract, in memory, with the SQL's conditions."""

    def __init__(self, n: int) -> None:
        self.rows = {i: {"state": "pending", "attempts": 0, "retry_at": None, "owner": None,
                         "code": None, "wamid": None} for i in range(1, n + 1)}
        self.claims = 0
        self.writes = 0

    async def claim_batch(self, campaign_ids: Sequence[int], limit: int, *, lease_s: float,
                          owner: str, pair_spacing_s: float = 0.0, tiers=None, senders=None) -> list[ClaimedRow]:
        await trio.lowlevel.checkpoint()
        self.claims += 1
        out = []
        for rid, r in self.rows.items():
            if len(out) >= limit:
                break
            if r["state"] == "pending" and (r["retry_at"] is None or r["retry_at"] <= now()):
                r["state"], r["owner"] = "claimed", owner
                contact = {"name": f"Creator {rid}", "genre": "comedy", "language": "hi",
                           "external_id": f"x{rid}", "attributes": {}}
                out.append(ClaimedRow(rid, 1, f"9198000{rid:05d}", "hi", r["attempts"], contact))
        return out

    async def record_results(self, outcomes: Sequence[Outcome], *, owner: str,
                             pair_spacing_s: float = 0.0) -> int:
        await trio.lowlevel.checkpoint()
        self.writes += 1
        for o in outcomes:
            r = self.rows[o.id]
            assert r["owner"] == owner and r["state"] in ("claimed", "unknown"), (o, r)
            r.update(state=o.state, retry_at=o.retry_at, code=o.code, wamid=o.wamid or r["wamid"],
                     attempts=r["attempts"] + o.attempt_inc, owner=None)
        return len(outcomes)

    async def release_claims(self, ids: Sequence[int], *, owner: str) -> None:
        for rid in ids:
            r = self.rows[rid]
            if r["state"] == "claimed" and r["owner"] == owner:
                r.update(state="pending", owner=None)

    async def expire_leases(self, campaign_ids: Sequence[int]) -> int:
        return 0

    def states(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows.values():
            out[r["state"]] = out.get(r["state"], 0) + 1
        return out


class ScriptedLane:
    """Answers per call according to `script(to, call_number)`; records every request body."""

    def __init__(self, script: Callable[[str, int], SendResult | Exception], log: list[dict]) -> None:
        self.script = script
        self.log = log

    async def send(self, body: bytes) -> SendResult:
        await trio.sleep(0.001)
        msg = orjson.loads(body)
        self.log.append(msg)
        calls = sum(1 for m in self.log if m["to"] == msg["to"])
        answer = self.script(msg["to"], calls)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def aclose(self) -> None:
        pass


class OpenLimiter:
    async def take(self, n: int = 1) -> None:
        await trio.lowlevel.checkpoint()


def compiled_invite():
    doc = orjson.loads((EXAMPLES / "message_templates.json").read_bytes())
    variants = {t.language: t for t in parse_message_templates(doc) if t.name == "daily_campaign_invite"}
    return compile_campaign(variants, {"1": "contact.name", "2": "contact.genre_label", "3": "#x", "4": "9 PM",
                                       "button.0": "contact.external_id"}, default_language="hi")


def make_dispatcher(ledger: MemoryLedger, script, log: list[dict], *, halts: list | None = None,
                    throttles: list | None = None, fresh_slots: bool = False, **cfg) -> Dispatcher:
    """`fresh_slots`: every claim cycle gets a new CampaignSlot object, as CampaignRunner builds them."""
    compiled = compiled_invite()

    def new_slot() -> CampaignSlot:
        return CampaignSlot(id=1, name="c1", compiled=compiled, limiter=OpenLimiter(), number="n1",
                            on_throttle=(throttles.append if throttles is not None else (lambda r: None)))

    slot = new_slot()
    state = {"active": True}

    async def campaigns():
        done = all(r["state"] not in ("pending", "claimed") for r in ledger.rows.values())
        return [] if done or not state["active"] else [new_slot() if fresh_slots else slot]

    async def on_halt(cid, code, title):
        state["active"] = False
        if halts is not None:
            halts.append((cid, code))

    return Dispatcher(ledger, lambda number: ScriptedLane(script, log), campaigns=campaigns, owner="w1",
                      config=DispatchConfig(lanes=4, batch_size=10, idle_poll_s=0.5, **cfg),
                      on_halt=on_halt, clock=now)


def accept(to: str, n: int) -> SendResult:
    return SendResult(wamid=f"wamid.{to}.{n}", message_status="accepted")


async def test_every_row_accepted_once(autojump_clock) -> None:
    ledger, log = MemoryLedger(50), []
    await make_dispatcher(ledger, accept, log).run()
    assert ledger.states() == {"accepted": 50}
    assert len(log) == 50 and len({m["to"] for m in log}) == 50
    assert ledger.writes < 50, "outcomes are written in batches"


async def test_20_throttles_then_success_never_fails_and_spends_no_attempts(autojump_clock) -> None:
    ledger, log, throttles = MemoryLedger(5), [], []
    calls = {"n": 0}

    def script(to: str, n: int):
        calls["n"] += 1
        if calls["n"] <= 20:
            return ThrottledError("130429", retry_after=None, code=130429)
        return accept(to, n)

    await make_dispatcher(ledger, script, log, throttles=throttles).run()
    assert ledger.states() == {"accepted": 5}
    assert len(throttles) == 20, "every throttle reaches the limiter's AIMD hook"
    assert all(r["attempts"] == 1 for r in ledger.rows.values()), "throttling does not consume attempts"


async def test_transient_errors_retry_with_backoff_then_fail_with_code(autojump_clock) -> None:
    ledger, log = MemoryLedger(3), []
    await make_dispatcher(ledger, lambda to, n: TransientSendError("x", code=131000), log,
                          max_attempts=4).run()
    assert ledger.states() == {"failed": 3}
    assert {r["code"] for r in ledger.rows.values()} == {131000}
    assert all(r["attempts"] == 4 for r in ledger.rows.values())
    assert len(log) == 12
    assert trio.current_time() >= 2.0, "retries waited for their backoff"


async def test_permanent_error_fails_only_that_recipient(autojump_clock) -> None:
    ledger, log = MemoryLedger(10), []
    bad = "+919800000003"

    def script(to: str, n: int):
        return PermanentSendError("x", code=131026) if to == bad else accept(to, n)

    await make_dispatcher(ledger, script, log).run()
    assert ledger.states() == {"accepted": 9, "failed": 1}
    assert ledger.rows[3]["code"] == 131026
    assert sum(1 for m in log if m["to"] == bad) == 1


async def test_circuit_breaker_pauses_without_burning_the_audience(autojump_clock) -> None:
    ledger, log, halts = MemoryLedger(100), [], []
    await make_dispatcher(ledger, lambda to, n: CampaignHaltError("paused", code=132015), log,
                          halts=halts).run()
    assert halts == [(1, 132015)]
    assert ledger.states() == {"pending": 100}, "halted rows go back to pending, untouched"
    assert len(log) < 20, "the breaker trips within a few failures"


async def test_breaker_counts_survive_slot_refreshes(autojump_clock) -> None:
    """The claimer refreshes its slots every cycle while lanes still hold the older ones: an
    error counted on an old slot still counts, so 4 lanes stop after at most 3 + 3 in flight."""
    ledger, log, halts = MemoryLedger(200), [], []
    await make_dispatcher(ledger, lambda to, n: CampaignHaltError("paused", code=132015), log,
                          halts=halts, fresh_slots=True).run()
    assert halts == [(1, 132015)]
    assert ledger.states() == {"pending": 200}
    assert len(log) <= 6, f"{len(log)} requests: the breaker lost counts across slot refreshes"


async def test_unknown_outcome_is_recorded_and_never_resent(autojump_clock) -> None:
    ledger, log = MemoryLedger(4), []
    lost = "+919800000002"

    def script(to: str, n: int):
        return OutcomeUnknown("read timeout") if to == lost else accept(to, n)

    await make_dispatcher(ledger, script, log).run()
    assert ledger.states() == {"accepted": 3, "unknown": 1}
    assert sum(1 for m in log if m["to"] == lost) == 1


@pytest.mark.parametrize("stop_after", [0.003, 0.02])
async def test_stop_records_in_flight_and_releases_the_rest(autojump_clock, stop_after: float) -> None:
    ledger, log = MemoryLedger(200), []
    d = make_dispatcher(ledger, accept, log)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(d.run)
        await trio.sleep(stop_after)
        d.stop()
    states = ledger.states()
    assert "claimed" not in states, "no row is left claimed after a clean stop"
    assert states.get("accepted", 0) == len(log), "every request sent has its outcome recorded"
    assert states.get("accepted", 0) + states.get("pending", 0) == 200


class FlakyLedger(MemoryLedger):
    """Postgres away for the first few claim and write round trips."""

    def __init__(self, n: int, *, claim_failures: int, write_failures: int) -> None:
        super().__init__(n)
        self.claim_failures, self.write_failures = claim_failures, write_failures

    async def claim_batch(self, *args, **kw):
        if self.claim_failures:
            self.claim_failures -= 1
            raise DatabaseUnavailable("database connection lost")
        return await super().claim_batch(*args, **kw)

    async def record_results(self, outcomes, *, owner, pair_spacing_s=0.0):
        if self.write_failures:
            self.write_failures -= 1
            raise DatabaseUnavailable("database connection lost")
        return await super().record_results(outcomes, owner=owner)


async def test_postgres_outage_pauses_then_carries_on_losing_nothing(autojump_clock) -> None:
    ledger, log = FlakyLedger(60, claim_failures=3, write_failures=4), []
    await make_dispatcher(ledger, accept, log).run()
    assert ledger.states() == {"accepted": 60}, "every outcome written once Postgres is back"
    assert len(log) == 60, "nobody sent twice"


async def test_unreachable_api_pauses_the_campaign_and_burns_nobody(autojump_clock) -> None:
    from broadcaster.errors import ProviderUnreachable

    ledger, log, halts = MemoryLedger(300), [], []
    await make_dispatcher(ledger, lambda to, n: ProviderUnreachable("refused", title="Cloud API unreachable"),
                          log, halts=halts).run()
    assert halts == [(1, None)]
    assert set(ledger.states()) == {"pending"}, "no row failed or spent an attempt"
    assert all(r["attempts"] == 0 for r in ledger.rows.values())


class SlowLimiter:
    """One token a second for all lanes together (a number cut down by AIMD)."""

    def __init__(self) -> None:
        self.lock = trio.Lock()

    async def take(self, n: int = 1) -> None:
        async with self.lock:
            await trio.sleep(1.0)


async def test_a_row_is_never_sent_on_a_lease_that_may_end_mid_send(autojump_clock) -> None:
    """Rows claimed ahead wait for a slow limiter; one that waited past lease_s − margin goes
    back unsent (no attempt spent) and is claimed afresh, so no send starts near its lease end."""
    lease_s, margin = 20.0, 10.0
    claimed_at: dict[int, float] = {}

    class TimedLedger(MemoryLedger):
        async def claim_batch(self, campaign_ids, limit, **kw):  # type: ignore[no-untyped-def]
            rows = await super().claim_batch(campaign_ids, limit, **kw)
            for r in rows:
                claimed_at[r.id] = trio.current_time()
            return rows

    ledger, log = TimedLedger(40), []
    late: list[float] = []

    def script(to: str, n: int) -> SendResult:
        waited = trio.current_time() - claimed_at[int(to[-5:])]
        if waited > lease_s - margin + 0.002:  # the scripted lane answers 1 ms after the send starts
            late.append(waited)
        return accept(to, n)

    dispatcher = make_dispatcher(ledger, script, log, lease_s=lease_s, send_margin_s=margin)
    for slot in await dispatcher.campaigns():
        slot.limiter = SlowLimiter()
    await dispatcher.run()
    assert ledger.states() == {"accepted": 40}
    assert late == [], "no send started after its row's start-by time"
    assert dispatcher.stats.lease_returns > 0, "the test made rows wait past their start-by time"
    assert len(log) == 40 and all(r["attempts"] == 1 for r in ledger.rows.values()), "a return spends no attempt"
