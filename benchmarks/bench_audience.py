"""Audience benchmark: import 1M generated contacts, re-import them, and time `segments count`.

    .venv/bin/python benchmarks/bench_audience.py [--rows 1000000] [--seed 11] [--keep]

Generates the CSV with /work/shared/tools/gen_contacts.py into /tmp (never committed), imports it
into a throwaway database (BENCH_DATABASE_URL, default …/broadcaster_bench_audience, dropped and
recreated each run unless --keep), then counts a handful of segments and prints each plan.

Targets (issue 3): 1M rows imported in under 60 s; `segments count` under 200 ms.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from broadcaster.contacts import import_contacts  # noqa: E402
from broadcaster.db import Database, default_dsn, ensure_database, open_db  # noqa: E402
from broadcaster.migrate import migrate  # noqa: E402
from broadcaster.segment_store import count_segment, create_segment, explain_count  # noqa: E402
from segments.filters import SegmentFilter  # noqa: E402

GENERATOR = Path("/work/shared/tools/gen_contacts.py")
COUNT_RUNS = 7

SEGMENTS = {
    "genre×language": dict(genres=("humor", "news"), languages=("hi", "ta")),
    "genre×language, opted in": dict(genres=("humor",), languages=("hi",), opted_in=True),
    "one genre, followers ≥ 1k, active 30 d": dict(genres=("sports",), followers_min=1000, active_within_days=30),
    "language only": dict(languages=("bn", "te", "mr")),
    "whole workspace": dict(),
    "tag any (verified)": dict(tags_any=("verified",)),
    "genre + tag all": dict(genres=("music",), tags_all=("verified", "top100")),
    "city only": dict(cities=("Pune", "Jaipur")),
}


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def generate(rows: int, seed: int) -> Path:
    path = Path(f"/tmp/bench_contacts_{rows}_{seed}.csv")
    if not path.exists():
        started = time.perf_counter()
        subprocess.run([sys.executable, str(GENERATOR), "--rows", str(rows), "--seed", str(seed), "-o", str(path)],
                       check=True)
        print(f"generated {path} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - started:.1f} s")
    return path


async def timed_import(db: Database, path: Path, label: str) -> None:
    cpu0, t0 = _cpu_s(), time.perf_counter()
    s = await import_contacts(db, path)
    wall, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    print(f"\n{label}: {s.read:,} rows in {wall:.1f} s = {s.read / wall:,.0f} rows/s "
          f"(this process {cpu:.1f} s CPU; the rest is Postgres)")
    print(f"  {s.describe()}")


async def bench_counts(db: Database, workspace: str) -> None:
    print(f"\nsegments count on {await db.fetchval('SELECT count(*) FROM contacts'):,} contacts "
          f"(median of {COUNT_RUNS} after one warm-up; wall time from Python, bridge included)")
    plans = []
    for i, (label, fields) in enumerate(SEGMENTS.items()):
        name = f"bench_{i}"
        await create_segment(db, name, SegmentFilter(workspace=workspace, **fields))
        size = await count_segment(db, name)
        times = []
        for _ in range(COUNT_RUNS):
            t0 = time.perf_counter()
            await count_segment(db, name)
            times.append((time.perf_counter() - t0) * 1000)
        median = statistics.median(times)
        flag = "" if median < 200 else "  <-- over 200 ms"
        print(f"  {label:40s} {size:>9,} contacts  {median:7.1f} ms{flag}")
        plans.append((label, await explain_count(db, name)))
    for label, plan in plans:
        print(f"\nEXPLAIN ANALYZE — {label}\n{plan}")


async def main(args: argparse.Namespace) -> None:
    path = generate(args.rows, args.seed)
    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} (other work on the machine slows "
          "every figure below)")
    base = os.environ.get("BENCH_DATABASE_URL") or default_dsn().rsplit("/", 1)[0] + "/broadcaster_bench_audience"
    admin = base.rsplit("/", 1)[0] + "/postgres"
    if not args.keep:
        async with open_db(admin, max_size=1) as a:
            await a.execute(f'DROP DATABASE IF EXISTS "{base.rsplit("/", 1)[1]}" WITH (FORCE)')
    await ensure_database(base)
    async with open_db(base, max_size=4) as db:
        await migrate(db)
        await timed_import(db, path, "first import")
        await timed_import(db, path, "re-import (same file: all unchanged)")
        workspace = await db.fetchval("SELECT workspace FROM contacts GROUP BY 1 ORDER BY count(*) DESC LIMIT 1")
        await bench_counts(db, workspace)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database (and its contacts)")
    trio.run(main, parser.parse_args())
