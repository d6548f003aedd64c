"""Chaos: 10k statuses for one campaign, shuffled, 20% duplicated, POSTed concurrently while send
responses are still being written → the final ledger equals the truth exactly."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import trio

from broadcaster.db import Database
from broadcaster.inbound import final_state
from broadcaster.ledger import LedgerStore, Outcome
from tests.integration.webhook_support import (
    Row,
    change,
    envelope,
    ledger_rows,
    make_ledger,
    running_receiver,
    status,
)

T0 = 1_760_000_000
OUTCOMES = [  # what can happen to one message, as status sequences (then subsets are taken)
    ("sent", "delivered", "read"), ("sent", "delivered"), ("sent",), ("sent", "failed"),
    ("failed",), ("sent", "delivered", "failed"), ("read",),
]
FAIL_CODES = [131026, 131047, 131049, 131050, 132012]


async def test_chaos_10k_shuffled_duplicated_concurrent_statuses_settle_exactly(
        db: Database, uniq: str) -> None:
    rnd = random.Random(f"chaos-{uniq}")
    accepted = await make_ledger(db, uniq, 3900)
    unknown = await make_ledger(db, uniq, 600, state="unknown", with_wamid=False,
                                campaign=accepted, tag="u")
    claimed_cb = await make_ledger(db, uniq, 600, state="claimed", with_wamid=False,
                                   lease_owner="chaos", campaign=accepted, tag="c")
    claimed_bare = await make_ledger(db, uniq, 900, state="claimed", with_wamid=False,
                                     lease_owner="chaos", campaign=accepted, tag="b")
    cid = accepted.campaign_id

    # The truth: which events each row gets, and the state that must result.
    events: list[dict[str, Any]] = []
    per_row: dict[int, list[dict[str, Any]]] = defaultdict(list)
    groups = [(accepted.rows, False), (unknown.rows, True), (claimed_cb.rows, True), (claimed_bare.rows, False)]
    for rows, with_callback in groups:
        for row in rows:
            chain = rnd.choice(OUTCOMES)
            kept = [s for s in chain if rnd.random() < 0.9]  # some webhooks never come
            code = rnd.choice(FAIL_CODES)
            for k, name in enumerate(kept):
                ev = status(row.wamid, name, T0 + rnd.randrange(0, 3600) + k, recipient=row.wa_id,
                            callback=f"{cid}:{row.id}" if with_callback else None,
                            code=code if name == "failed" else None)
                events.append(ev)
                per_row[row.id].append(ev)
    assert 9_000 <= len(events) <= 11_000, len(events)
    deliveries = events + rnd.sample(events, len(events) // 5)
    rnd.shuffle(deliveries)

    # Bodies of 1-60 statuses, split over 1-2 entries and 1-3 changes, as Meta batches them.
    bodies: list[dict[str, Any]] = []
    i = 0
    while i < len(deliveries):
        n = rnd.randint(1, 60)
        chunk = deliveries[i:i + n]
        i += n
        entries: list[list[dict[str, Any]]] = [[] for _ in range(rnd.randint(1, 2))]
        for entry in entries:
            entry.extend(change([]) for _ in range(rnd.randint(1, 3)))
        for ev in chunk:
            rnd.choice(rnd.choice(entries))["value"]["statuses"].append(ev)
        bodies.append(envelope(*entries))

    # Send responses for the claimed rows land while the webhooks are flowing.
    claimed = claimed_cb.rows + claimed_bare.rows
    rnd.shuffle(claimed)

    async with running_receiver(db) as rx:
        send, receive = trio.open_memory_channel[dict[str, Any]](0)

        async def poster(receive: trio.MemoryReceiveChannel[dict[str, Any]]) -> None:
            async with receive:
                async for doc in receive:
                    response = await rx.post(doc)
                    assert response.status_code == 200, response.text

        async def responses(rows: list[Row]) -> None:
            store = LedgerStore(db)
            for start in range(0, len(rows), 25):
                batch = rows[start:start + 25]
                await store.record_results([Outcome(r.id, "accepted", wamid=r.wamid) for r in batch],
                                           owner="chaos")
                await trio.sleep(0.005)

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for _ in range(16):
                    nursery.start_soon(poster, receive.clone())
                nursery.start_soon(responses, claimed)
                async with send:
                    for doc in bodies:
                        await send.send(doc)
                receive.close()
            await rx.applied()
        stats = rx.service.statistics()

    assert stats.accepted == len(bodies)
    unique = {(ev["id"], ev["status"]) for ev in events}
    assert stats.apply.new_statuses == len(unique)
    assert stats.apply.unmatched > 0  # statuses did beat their send responses: that path ran
    got = await ledger_rows(db, cid)
    start_state = {r.id: "accepted" for r in accepted.rows + claimed}
    start_state.update({r.id: "unknown" for r in unknown.rows})
    wrong = []
    for row_id, start in start_state.items():
        evs = per_row[row_id]
        want = final_state(start, [e["status"] for e in evs])
        row = got[row_id]
        ts = {name: min((datetime.fromtimestamp(int(e["timestamp"]), UTC) for e in evs if e["status"] == name),
                        default=None) for name in ("sent", "delivered", "read", "failed")}
        delivered = min((t for t in (ts["delivered"], ts["read"]) if t is not None), default=None)
        codes = {e["errors"][0]["code"] for e in evs if e["status"] == "failed"}
        expect = (want, ts["sent"], delivered, ts["read"], ts["failed"], codes.pop() if codes else None)
        actual = (row["state"], row["sent_at"], row["delivered_at"], row["read_at"], row["failed_at"],
                  row["error_code"])
        if actual != expect:
            wrong.append((row_id, start, [e["status"] for e in evs], actual, expect))
        if start == "unknown":
            assert row["unknown_resolution"] == ("webhook" if evs else None), row_id
    assert wrong == [], f"{len(wrong)} rows differ, e.g. {wrong[:3]}"
    assert await db.fetchval(
        "SELECT count(*) FROM status_events s JOIN ledger l ON l.wamid = s.wamid WHERE l.campaign_id = $1",
        cid) == len(unique)
    pending = await db.fetchval("SELECT count(*) FROM status_pending WHERE wamid LIKE $1",
                                f"wamid.{uniq}%")
    assert pending == 0
    opted_out = {r.contact_id for r in accepted.rows + unknown.rows + claimed
                 if any(e["status"] == "failed" and e["errors"][0]["code"] == 131050 for e in per_row[r.id])}
    assert {r["id"] for r in await db.fetch(
        "SELECT id FROM contacts WHERE workspace = $1 AND NOT marketing_opt_in", accepted.workspace)} == opted_out
