"""Webhook receiver throughput: status events durably stored AND applied per second, answer times.

    .venv/bin/python benchmarks/bench_webhooks.py [--messages 10000] [--batches 1,10,50,200]
                                                  [--concurrency 32] [--duplicates 0.1]

What runs: a throwaway database (created, migrated, dropped), `--messages` ledger rows in
`accepted` with their wamids, and 3 status events per message (sent, delivered, read: the
issue's "3 webhooks per message"), shuffled, `--duplicates` of them sent twice. The receiver
(`serve_inbound`: HTTP server + group commit + apply worker) runs in its own process, as in
production; this process is the load (Meta), a lean keep-alive HTTP/1.1 client over
`--concurrency` connections with pre-built, pre-signed bodies of `batch` statuses each.

Printed per batch size: POSTs, events, stored/s (all events answered 200, i.e. committed), applied/s
(until every event is in the log and every ledger row reads `read`), and the answer time of
POST /webhook (p50 / p99 / max, ms). Target (issue 7): ≥ 3,000 events/s stored and applied.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import orjson
import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from broadcaster.db import Database, ensure_database, open_db  # noqa: E402
from broadcaster.inbound import sign  # noqa: E402
from broadcaster.migrate import migrate  # noqa: E402

SECRET = "bench-app-secret"
T0 = 1_760_000_000
POLL_S = 0.02  # how often the load process looks at the database for "everything applied"


def server_url() -> str:
    url = os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
    return url.rsplit("/", 1)[0]


# ----------------------------------------------------------------------------- the receiver process


def serve(db_url: str) -> None:
    """Child process: run serve_inbound on a free port and print it."""
    from broadcaster.config import Settings
    from broadcaster.inbound import serve_inbound

    settings = Settings(database_url=db_url, whatsapp_api_url="http://127.0.0.1:1",
                        whatsapp_app_secret=SECRET, whatsapp_verify_token="bench")

    async def main() -> None:
        async with open_db(db_url, max_size=8) as db, trio.open_nursery() as nursery:
            port = await nursery.start(serve_inbound, db, settings, "127.0.0.1", 0)
            print(port, flush=True)

    trio.run(main)


# ----------------------------------------------------------------------------- data


async def seed(db: Database, tag: str, n: int) -> list[tuple[str, str]]:
    """`n` accepted ledger rows; returns (wamid, wa_id) per row."""
    ws = f"bench_{tag}"
    await db.execute("INSERT INTO workspaces (name) VALUES ($1)", ws)
    await db.execute("INSERT INTO segments (name, workspace, filter) VALUES ($1, $1, '{}')", ws)
    cid = await db.fetchval(
        "INSERT INTO campaigns (name, workspace, segment, template_name, default_language, state)"
        " VALUES ($1, $1, $1, 'daily_campaign_invite', 'hi', 'running') RETURNING id", ws)
    rows = await db.fetch(
        """
        WITH c AS (
            INSERT INTO contacts (workspace, wa_id, marketing_opt_in)
            SELECT $1, '91' || lpad(i::text, 10, '0'), true FROM generate_series(1, $2) AS i
            RETURNING id, wa_id
        )
        INSERT INTO ledger (campaign_id, contact_id, wa_id, language, state, wamid, accepted_at)
        SELECT $3, c.id, c.wa_id, 'hi', 'accepted', 'wamid.' || $1 || '.' || c.wa_id, now() FROM c
        RETURNING wamid, wa_id
        """, ws, n, cid)
    return [(r["wamid"], r["wa_id"]) for r in rows]


def build_requests(messages: list[tuple[str, str]], batch: int, duplicates: float,
                   rnd: random.Random) -> tuple[list[bytes], int]:
    """Signed raw HTTP requests carrying every event; returns (requests, events incl. duplicates)."""
    events = []
    for wamid, wa_id in messages:
        for k, name in enumerate(("sent", "delivered", "read")):
            ev = {"id": wamid, "status": name, "timestamp": str(T0 + k), "recipient_id": wa_id}
            if name != "read":
                ev["pricing"] = {"billable": True, "pricing_model": "PMP", "type": "regular",
                                 "category": "marketing"}
            events.append(ev)
    events += rnd.sample(events, int(len(events) * duplicates))
    rnd.shuffle(events)
    requests = []
    for i in range(0, len(events), batch):
        body = orjson.dumps({"object": "whatsapp_business_account", "entry": [{
            "id": "102290129340398", "changes": [{"field": "messages", "value": {
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
                "statuses": events[i:i + batch]}}]}]})
        head = (f"POST /webhook HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                f"x-hub-signature-256: {sign(body, SECRET)}\r\ncontent-length: {len(body)}\r\n\r\n")
        requests.append(head.encode() + body)
    return requests, len(events)


# ----------------------------------------------------------------------------- load


async def receive(stream: trio.SocketStream) -> bytes:
    data = await stream.receive_some(65536)
    if not data:
        raise RuntimeError("the receiver closed the connection")
    return data


async def connection(port: int, requests: list[bytes], latencies: list[float]) -> None:
    """Send `requests` one after another on one keep-alive connection, timing each answer."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    buf = bytearray()
    async with stream:
        for req in requests:
            started = time.perf_counter()
            await stream.send_all(req)
            while (end := buf.find(b"\r\n\r\n")) < 0:
                buf += await receive(stream)
            head = bytes(buf[:end]).decode("latin-1")
            status = int(head.split(" ", 2)[1])
            length = next(int(line.split(":", 1)[1]) for line in head.split("\r\n")[1:]
                          if line.lower().startswith("content-length:"))
            while len(buf) < end + 4 + length:
                buf += await receive(stream)
            del buf[:end + 4 + length]
            latencies.append(time.perf_counter() - started)
            if status != 200:
                raise RuntimeError(f"POST /webhook answered {status}")


async def run_one(db: Database, port: int, batch: int, n: int, concurrency: int, duplicates: float,
                  rnd: random.Random) -> dict[str, float]:
    messages = await seed(db, f"{os.getpid()}_{batch}_{rnd.randrange(10**6)}", n)
    requests, events = build_requests(messages, batch, duplicates, rnd)
    unique = 3 * n
    wamids = [w for w, _ in messages]
    base = await db.fetchval("SELECT count(*) FROM status_events")
    latencies: list[float] = []
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for c in range(concurrency):
            nursery.start_soon(connection, port, requests[c::concurrency], latencies)
    stored_s = time.perf_counter() - started
    while True:  # the receiver is another process: look at the database until all is applied
        logged = await db.fetchval("SELECT count(*) FROM status_events") - base
        unprocessed = await db.fetchval("SELECT count(*) FROM webhook_events WHERE processed_at IS NULL")
        if logged >= unique and unprocessed == 0:
            break
        await trio.sleep(POLL_S)
    applied_s = time.perf_counter() - started
    read = await db.fetchval("SELECT count(*) FROM ledger WHERE wamid = ANY($1::text[]) AND state = 'read'",
                             wamids)
    if read != n:
        raise RuntimeError(f"only {read} of {n} ledger rows reached 'read'")
    latencies.sort()
    return {"batch": batch, "posts": len(requests), "events": events, "stored_per_s": events / stored_s,
            "applied_per_s": events / applied_s, "unique_applied_per_s": unique / applied_s,
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "max_ms": 1000 * latencies[-1]}


async def main(args: argparse.Namespace) -> None:
    name = f"bc_bench_webhooks_{os.getpid()}"
    db_url = f"{server_url()}/{name}"
    await ensure_database(db_url)
    proc = None
    try:
        async with open_db(db_url, max_size=2) as db:
            await migrate(db)
            proc = await trio.lowlevel.open_process([sys.executable, __file__, "--serve", db_url],
                                                    stdout=subprocess.PIPE, cwd=ROOT)
            assert proc.stdout is not None
            line = b""
            while not line.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(64)
                if not chunk:
                    raise RuntimeError("the receiver process exited before reporting its port")
                line += chunk
            port = int(line)
            rnd = random.Random(1)
            print(f"{args.messages} messages × 3 statuses, {args.duplicates:.0%} duplicated, "
                  f"{args.concurrency} connections; receiver in its own process, {os.cpu_count()} CPUs")
            print(f"{'batch':>6} {'POSTs':>7} {'events':>7} {'stored/s':>9} {'applied/s':>10} "
                  f"{'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}")
            for batch in args.batches:
                r = await run_one(db, port, batch, args.messages, args.concurrency, args.duplicates, rnd)
                print(f"{r['batch']:>6} {r['posts']:>7} {r['events']:>7} {r['stored_per_s']:>9,.0f} "
                      f"{r['applied_per_s']:>10,.0f} {r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} "
                      f"{r['max_ms']:>7.1f}", flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            with trio.move_on_after(10):
                await proc.wait()
        async with open_db(f"{server_url()}/postgres", max_size=1) as admin:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10_000, help="ledger rows; 3 statuses each")
    parser.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 10, 50, 200],
                        help="statuses per POST, comma-separated (one run each)")
    parser.add_argument("--concurrency", type=int, default=32, help="client connections")
    parser.add_argument("--duplicates", type=float, default=0.1, help="share of events sent twice")
    parser.add_argument("--serve", metavar="DB_URL", help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.serve:
        serve(arguments.serve)
    else:
        trio.run(main, arguments)
