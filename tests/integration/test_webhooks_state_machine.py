"""The status state machine in Postgres, property-tested: any subset of events, in any order, in
any batching, matched by wamid, by callback data, or arriving before the wamid is written → the
row ends in `final_state` (max rank, failed kept) with the earliest timestamps, read implying
delivered."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broadcaster.db import Database, open_db
from broadcaster.inbound import StatusEvent, apply_new_statuses, apply_rechecks, final_state
from tests.integration.webhook_support import Seeded, make_ledger

T0 = datetime(2026, 3, 1, tzinfo=UTC)
STARTS = ["accepted", "unknown", "claimed", "pending", "sent", "delivered", "read", "failed"]
STATUSES = ["sent", "delivered", "read", "failed", "played"]

_base: dict[str, Seeded] = {}
_counter = iter(range(10**9))


@pytest.fixture
def in_db_thread(db_url: str) -> Iterator[Callable[..., Any]]:
    """Run `afn(db, *args)` on a trio loop in a helper thread that holds one pool for the whole
    test: a hypothesis example is a plain call and cannot use pytest-trio's async fixtures. The
    calls run in that loop's main task (the asyncio bridge lives in its context)."""
    box: dict[str, Any] = {}
    ready = threading.Event()

    async def main() -> None:
        async with open_db(db_url, max_size=2) as db:
            send, receive = trio.open_memory_channel[Any](0)
            box.update(send=send, token=trio.lowlevel.current_trio_token())
            ready.set()
            async for afn, args, answer in receive:
                try:
                    answer.put((True, await afn(db, *args)))
                except Exception as exc:  # handed back to the caller's thread
                    answer.put((False, exc))

    def call(afn: Callable[..., Any], *args: Any) -> Any:
        answer: queue.Queue[tuple[bool, Any]] = queue.Queue()
        trio.from_thread.run(box["send"].send, (afn, args, answer), trio_token=box["token"])
        ok, value = answer.get(timeout=60)
        if not ok:
            raise value
        return value

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    assert ready.wait(10), "database thread did not start"
    yield call
    trio.from_thread.run_sync(box["send"].close, trio_token=box["token"])
    thread.join(10)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=st.sampled_from(STARTS),
       events=st.lists(st.tuples(st.sampled_from(STATUSES), st.integers(0, 50)), max_size=10),
       cuts=st.lists(st.integers(0, 10), max_size=3),
       match=st.sampled_from(["wamid", "callback", "late"]))
def test_any_order_subset_and_batching_ends_in_the_final_state(
        in_db_thread: Callable[..., Any], uniq: str, start: str, events: list[tuple[str, int]],
        cuts: list[int], match: str) -> None:
    in_db_thread(check, uniq, start, events, cuts, match)


async def check(db: Database, uniq: str, start: str, events: list[tuple[str, int]], cuts: list[int],
                match: str) -> None:
    if uniq not in _base:
        _base[uniq] = await make_ledger(db, uniq, 0)
    (row,) = (await make_ledger(db, uniq, 1, state=start, with_wamid=match == "wamid",
                                campaign=_base[uniq], tag=f"p{next(_counter)}")).rows
    body_id = await db.fetchval("INSERT INTO webhook_events (body) VALUES ('{}') RETURNING id")
    evs = [StatusEvent(row.wamid, name, T0 + timedelta(seconds=offset), body_id,
                       callback_data=f"{_base[uniq].campaign_id}:{row.id}" if match == "callback" else None,
                       callback_campaign_id=_base[uniq].campaign_id if match == "callback" else None,
                       callback_ledger_id=row.id if match == "callback" else None,
                       error_code=131026 if name == "failed" else None)
           for name, offset in events]
    bounds = sorted({min(c, len(evs)) for c in cuts} | {0, len(evs)})
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        async with db.transaction() as conn:
            result = await apply_new_statuses(conn, evs[lo:hi])
        if result.unmatched:
            await apply_rechecks(db)
    if match == "late":  # the send response arrives last and writes the wamid
        await db.execute("UPDATE ledger SET wamid = $2, updated_at = now() WHERE id = $1", row.id, row.wamid)

    got = await db.fetchrow("SELECT * FROM ledger WHERE id = $1", row.id)
    # a repeated (wamid, status) is a no-op: the first one applied holds (Meta repeats it unchanged)
    first = {name: next((ev.ts for ev in evs if ev.status == name), None) for name in STATUSES}
    delivered = min((t for t in (first["delivered"], first["read"]) if t is not None), default=None)
    assert got["state"] == final_state(start, [ev.status for ev in evs])
    assert (got["sent_at"], got["delivered_at"], got["read_at"]) == (first["sent"], delivered, first["read"])
    if first["failed"] is not None:
        assert got["failed_at"] == first["failed"]
        assert got["error_code"] == (131026 if start != "failed" else None)
    if evs and match != "late":
        settled = final_state(start, [ev.status for ev in evs]) != start
        assert got["unknown_resolution"] == ("webhook" if start == "unknown" and settled else None)
    assert await db.fetchval("SELECT count(*) FROM status_pending WHERE wamid = $1", row.wamid) == 0
    assert await db.fetchval("SELECT count(*) FROM status_events WHERE wamid = $1",
                             row.wamid) == len({ev.status for ev in evs})
