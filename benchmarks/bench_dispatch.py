"""End-to-end dispatch benchmark: one worker process, limiter open, sandbox in another process.

Measures, in one run against the same sandbox:
  engine      the real pipeline (claim → render → limit → httpcore lanes → batched ledger writes)
  bare lanes  the floor: N httpcore lanes POSTing the engine's payloads pre-built (same template and
              languages, so the sandbox does the same work), no DB, no render, no limiter
  naive peer  what people write by hand: asyncio + httpx.AsyncClient + Semaphore(100), no ledger
and prints msg/s, CPU per message and the ratios. Engine and bare lanes alternate (--repeat, 2 by
default) and the verdict is the median pair's ratio. Each run starts from an empty benchmark
database. With --rss, a 1M-recipient run's peak RSS and time to first message instead (run it
alone: it takes minutes).

    python benchmarks/bench_dispatch.py --recipients 100000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpcore
import httpx
import orjson
import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from broadcaster.campaign_run import CampaignRunner, RunOptions  # noqa: E402
from broadcaster.campaigns import create_campaign, launch  # noqa: E402
from broadcaster.config import Settings  # noqa: E402
from broadcaster.db import ensure_database, open_db  # noqa: E402
from broadcaster.dispatch import DispatchConfig  # noqa: E402
from broadcaster.migrate import migrate  # noqa: E402
from broadcaster.template_store import import_templates  # noqa: E402
from templates import build_message  # noqa: E402

NUMBER = "106540352242922"
VARS = {"1": "contact.name", "2": "contact.genre_label", "3": "#MonsoonMasti", "4": "9 PM",
        "button.0": "contact.external_id"}


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def start_sandbox(mps: int = 0) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "broadcaster.sandbox", "--port", "0", "--mps", str(mps),
         "--templates", str(ROOT / "examples" / "message_templates.json")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.search(r"(http://\S+)", line)
    if not m:
        proc.kill()
        raise SystemExit(f"sandbox did not start: {line!r}")
    return proc, m.group(1)


def bench_db_url() -> str:
    base = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/broadcaster")
    return base.rsplit("/", 1)[0] + "/broadcaster_bench"


def fresh_database(db_url: str) -> None:
    """Drop and recreate the benchmark database: every run starts empty, so figures do not drift
    with what earlier runs left (a ledger grown past shared_buffers slows every statement)."""

    async def recreate() -> None:
        async with open_db(db_url.rsplit("/", 1)[0] + "/postgres", max_size=1) as admin:
            await admin.execute(f'DROP DATABASE IF EXISTS "{db_url.rsplit("/", 1)[1]}" WITH (FORCE)')
        await ensure_database(db_url)

    trio.run(recreate)


async def prepare(db_url: str, n: int, tag: str) -> str:
    """A fresh workspace of n contacts (generated inside Postgres), a segment and a campaign."""
    from broadcaster.segment_store import create_segment
    from segments.filters import SegmentFilter

    await ensure_database(db_url)
    async with open_db(db_url) as db:
        await migrate(db)
        await import_templates(db, ROOT / "examples" / "message_templates.json")
        ws = f"bench_{tag}"
        await db.execute("INSERT INTO workspaces (name) VALUES ($1) ON CONFLICT DO NOTHING", ws)
        await db.execute(
            "INSERT INTO contacts (workspace, wa_id, external_id, name, language, genre, marketing_opt_in)"
            " SELECT $1, (919000000000 + g)::text, 'cr_' || g, 'Creator ' || g,"
            "   (ARRAY['hi','ta','te','bn','en'])[1 + g % 5], 'comedy', true"
            " FROM generate_series(1, $2::int) AS g ON CONFLICT DO NOTHING", ws, n)
        await create_segment(db, f"seg_{tag}", SegmentFilter(workspace=ws))
        name = f"bench_{tag}"
        await create_campaign(db, name, segment=f"seg_{tag}", template="daily_campaign_invite",
                              variables=VARS, default_language="hi")
        return name


async def run_engine(db_url: str, api_url: str, name: str, lanes: int) -> dict[str, float]:
    settings = Settings(database_url=db_url, whatsapp_api_url=api_url, whatsapp_token="bench",
                        whatsapp_phone_number_id=NUMBER)
    async with open_db(db_url, max_size=8) as db:
        t0 = time.perf_counter()
        result = await launch(db, name)
        freeze_s = time.perf_counter() - t0
        campaign_id = result.campaign.id
        runner = CampaignRunner(db, settings, RunOptions(
            dispatch=DispatchConfig(lanes=lanes, batch_size=500), mps_override=1_000_000,
            only_campaign=campaign_id))
        c0, t1 = cpu_s(), time.perf_counter()
        await runner.run()
        wall, cpu = time.perf_counter() - t1, cpu_s() - c0
        accepted = await db.fetchval(
            "SELECT count(*) FROM ledger WHERE campaign_id = $1 AND state = 'accepted'", campaign_id)
    return {"sent": accepted, "wall": wall, "cpu": cpu, "freeze": freeze_s}


def engine_bodies(n: int, prefix: str = "91800") -> list[bytes]:
    """The payloads the engine sends for `prepare`'s contacts (same template, languages, variables),
    rendered ahead, to other recipients: the bare loop asks the sandbox for the same work."""
    from templates import compile_campaign, parse_message_templates

    doc = orjson.loads((ROOT / "examples" / "message_templates.json").read_bytes())
    variants = {t.language: t for t in parse_message_templates(doc) if t.name == "daily_campaign_invite"}
    compiled = compile_campaign(variants, VARS, default_language="hi")
    bodies = []
    for g in range(1, n + 1):
        contact = {"name": f"Creator {g}", "genre": "comedy", "language": ("hi", "ta", "te", "bn", "en")[g % 5],
                   "city": None, "followers": None, "external_id": f"cr_{g}", "attributes": {}}
        rendered = compiled.render(contact, compiled.choose_language(contact["language"]))
        bodies.append(build_message(f"{prefix}{g:07d}", rendered.template, f"0:{g}"))
    return bodies


async def run_bare(api_url: str, n: int, lanes: int) -> dict[str, float]:
    """The floor: the engine's payloads pre-built, one httpcore connection per lane, nothing else."""
    from urllib.parse import urlsplit

    parts = urlsplit(api_url)
    origin = httpcore.Origin(b"http", parts.hostname.encode(), parts.port)
    url = f"{api_url}/{NUMBER}/messages"
    bodies = engine_bodies(n)
    headers = [(b"Content-Type", b"application/json"), (b"Host", parts.netloc.encode()),
               (b"Authorization", b"Bearer bench")]
    it = iter(bodies)
    ok = 0

    async def lane() -> None:
        nonlocal ok
        conn = httpcore.AsyncHTTPConnection(origin)
        for body in it:
            r = await conn.request(b"POST", url, headers=headers, content=body)
            ok += r.status == 200
        await conn.aclose()

    c0, t0 = cpu_s(), time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(lanes):
            nursery.start_soon(lane)
    return {"sent": ok, "wall": time.perf_counter() - t0, "cpu": cpu_s() - c0}


def run_naive(api_url: str, n: int) -> dict[str, float]:
    """A hand-written peer: asyncio + httpx, Semaphore(100), no ledger, no limiter (the engine's
    payloads, pre-built)."""

    bodies = engine_bodies(n, prefix="91700")

    async def main() -> int:
        sem = asyncio.Semaphore(100)
        ok = 0
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=100),
                                     headers={"Authorization": "Bearer bench",
                                              "Content-Type": "application/json"}) as client:
            async def one(body: bytes) -> None:
                nonlocal ok
                async with sem:
                    r = await client.post(f"{api_url}/{NUMBER}/messages", content=body)
                    ok += r.status_code == 200
            await asyncio.gather(*(one(b) for b in bodies))
        return ok

    c0, t0 = cpu_s(), time.perf_counter()
    ok = asyncio.run(main())
    return {"sent": ok, "wall": time.perf_counter() - t0, "cpu": cpu_s() - c0}


async def run_rss(db_url: str, api_url: str, name: str, seconds: float) -> dict[str, float]:
    """Freeze a big audience, send for `seconds`, sample RSS every second: is it flat?"""
    settings = Settings(database_url=db_url, whatsapp_api_url=api_url, whatsapp_token="bench",
                        whatsapp_phone_number_id=NUMBER)
    samples: list[float] = []
    first: list[float] = []
    async with open_db(db_url, max_size=8) as db:
        t0 = time.perf_counter()
        campaign_id = (await launch(db, name)).campaign.id
        freeze_s = time.perf_counter() - t0
        runner = CampaignRunner(db, settings, RunOptions(
            dispatch=DispatchConfig(lanes=64, batch_size=500), mps_override=1_000_000, only_campaign=campaign_id))
        t1 = time.perf_counter()

        async def sample() -> None:
            while True:
                if not first and runner.dispatcher.stats.sent_requests:
                    first.append(time.perf_counter() - t1)
                samples.append(rss_mb())
                await trio.sleep(0.25 if not first else 1.0)

        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sample)
                await runner.run()
                nursery.cancel_scope.cancel()
        runner.stop()
        sent = runner.dispatcher.stats.outcomes.get("accepted", 0)
        await db.execute("UPDATE campaigns SET state = 'cancelled' WHERE id = $1", campaign_id)
    return {"freeze": freeze_s, "first": first[0] if first else float("nan"), "sent": sent,
            "rss_start": samples[0] if samples else 0, "rss_peak": max(samples, default=0),
            "rss_end": samples[-1] if samples else 0,
            "peak_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def row(label: str, r: dict[str, float]) -> str:
    rate = r["sent"] / r["wall"] if r["wall"] else 0
    return (f"| {label:<11} | {int(r['sent']):>8} | {r['wall']:>7.1f} | {rate:>8.0f} | "
            f"{1000 * r['cpu'] / max(1, r['sent']):>7.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipients", type=int, default=100_000)
    ap.add_argument("--lanes", type=int, default=64)
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--naive-recipients", type=int, default=20_000,
                    help="the naive peer is slow (≈ 6 ms CPU/msg): measure its rate on this many")
    ap.add_argument("--rss", action="store_true", help="big-audience memory run instead of the comparison")
    ap.add_argument("--rss-seconds", type=float, default=60.0)
    ap.add_argument("--repeat", type=int, default=2,
                    help="engine and bare runs alternate this many times; the ratio is each pair's, "
                         "the verdict the median's (a shared 2-core machine drifts by ±15%% in a minute)")
    args = ap.parse_args()
    if args.rss:
        main_rss(args)
        return
    db_url = bench_db_url()
    fresh_database(db_url)
    sandbox, api_url = start_sandbox()
    pairs: list[tuple[dict[str, float], dict[str, float]]] = []
    try:
        for i in range(args.repeat):
            name = trio.run(prepare, db_url, args.recipients, f"{time.strftime('%H%M%S')}_{i}")
            engine = trio.run(run_engine, db_url, api_url, name, args.lanes)
            bare = trio.run(run_bare, api_url, args.recipients, args.lanes)
            pairs.append((engine, bare))
        naive = None if args.skip_naive else run_naive(api_url, min(args.recipients, args.naive_recipients))
    finally:
        sandbox.terminate()
        sandbox.wait(10)
    print(f"\nrecipients {args.recipients}, lanes {args.lanes}, sandbox in another process "
          f"(mps unlimited); audience freeze {pairs[0][0]['freeze']:.2f} s; engine and bare lanes "
          f"alternate {args.repeat}x\n")
    print("| run         |     sent |  wall s |    msg/s | CPU ms/msg |")
    print("|-------------|----------|---------|----------|------------|")
    ratios, rates = [], []
    for i, (engine, bare) in enumerate(pairs, 1):
        print(row(f"engine #{i}", engine))
        print(row(f"bare #{i}", bare))
        e_rate, b_rate = engine["sent"] / engine["wall"], bare["sent"] / bare["wall"]
        ratios.append(e_rate / b_rate)
        rates.append(e_rate)
    if naive:
        print(row("naive peer", naive))
    print(f"\nengine / bare lanes = {statistics.median(ratios):.2f} median "
          f"({', '.join(f'{r:.2f}' for r in ratios)})  (target >= 0.6)")
    if naive:
        print(f"engine / naive peer = {statistics.median(rates) / (naive['sent'] / naive['wall']):.2f}")
    print(f"engine msg/s = {statistics.median(rates):.0f} median  (target >= 1000)")


def main_rss(args: argparse.Namespace) -> None:
    db_url = bench_db_url()
    fresh_database(db_url)
    tag = "rss" + time.strftime("%H%M%S")
    sandbox, api_url = start_sandbox()
    try:
        t0 = time.perf_counter()
        name = trio.run(prepare, db_url, args.recipients, tag)
        prep = time.perf_counter() - t0
        r = trio.run(run_rss, db_url, api_url, name, args.rss_seconds)
    finally:
        sandbox.terminate()
        sandbox.wait(10)
    print(f"\n{args.recipients} recipients (contacts generated in Postgres in {prep:.1f} s)\n")
    print("| audience freeze s | time to first message s | sent in window | RSS start MB | RSS peak MB | "
          "RSS end MB | ru_maxrss MB |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {r['freeze']:.1f} | {r['first']:.2f} | {int(r['sent'])} | {r['rss_start']:.0f} | "
          f"{r['rss_peak']:.0f} | {r['rss_end']:.0f} | {r['peak_maxrss']:.0f} |")
    print("\ntarget: peak RSS < 200 MB and flat (end ≈ start) while sending a 1M-recipient campaign")


if __name__ == "__main__":
    main()
