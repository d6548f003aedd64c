"""What the Prometheus metrics cost per message. Target (issue 10): < 5% CPU per message at 1,000 msg/s.

Two measurements:
  calls      µs of the metric calls one message causes, in a tight loop: the worker's (lane
             in-flight gauge, record_send, limiter wait, claim/write latency per batch) and the
             inbound server's (3 status events, 2 latency observations, its share of a webhook),
             plus the CPU of one /metrics scrape with a realistic set of series;
  pipeline   the real Dispatcher (render → limit → httpcore lanes → batched writes) sending to the
             sandbox in another process, limiter paced at 1,000 msg/s, ledger in memory (no DB:
             a smaller denominator, so a pessimistic ratio), CPU per message without vs with the
             metric calls wired around lanes, limiter and ledger (as the engine wires them) and a
             scrape every 5 s. Runs alternate (off, on, on, off, …); medians are reported. On a
             busy 2-core machine run-to-run noise (±15%) exceeds the effect: trust the calls line.

    .venv/bin/python benchmarks/bench_metrics.py [--messages 5000] [--rounds 3] [--rate 1000]
"""

from __future__ import annotations

import argparse
import http.client
import resource
import statistics
import sys
import threading
import time
import timeit
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_dispatch import start_sandbox  # noqa: E402
from broadcaster import metrics  # noqa: E402
from broadcaster.dispatch import CampaignSlot, DispatchConfig, Dispatcher  # noqa: E402
from broadcaster.errors import (  # noqa: E402
    CampaignHaltError,
    OutcomeUnknown,
    PermanentSendError,
    ThrottledError,
    TransientSendError,
)
from broadcaster.ledger import ClaimedRow, Outcome  # noqa: E402
from broadcaster.transport import CloudApiTransport, SendResult, TransportConfig  # noqa: E402
from templates import compile_campaign, load_message_templates  # noqa: E402

NUMBER = "106540352242922"
TEMPLATE = "daily_campaign_invite"
TEMPLATES_JSON = ROOT / "examples" / "message_templates.json"
VARS = {"1": "contact.name", "2": "contact.genre_label", "3": "#MonsoonMasti", "4": "9 PM",
        "button.0": "contact.external_id"}
BATCH = 200          # rows per claim / write
WEBHOOK_BATCH = 50   # statuses per webhook POST


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ---- 1. the calls ---------------------------------------------------------------------------------

def worker_calls(i: int) -> None:
    """The metric calls one message causes in a worker (batch calls amortised over BATCH)."""
    with metrics.LANES_IN_FLIGHT.track_inprogress():
        pass
    metrics.record_send("accepted", None, 0.012, NUMBER, TEMPLATE)
    metrics.record_limiter_wait(NUMBER, 0.001)
    if i % BATCH == 0:
        metrics.observe_claim(0.004)
        metrics.observe_write(0.006)


def inbound_calls(i: int) -> None:
    """The metric calls one message's three status webhooks cause in the inbound server."""
    metrics.record_status_event("sent")
    metrics.record_status_event("delivered")
    metrics.observe_delivery_latency("delivered", 2.5)
    metrics.record_status_event("read")
    metrics.observe_delivery_latency("read", 600.0)
    if i % WEBHOOK_BATCH == 0:
        for _ in range(3):
            metrics.record_webhook("ok", 0.002)


def realistic_series() -> None:
    """A busy production process: 3 numbers × 5 templates × 6 outcomes, 20 codes, 5 campaigns, 6 teams."""
    numbers = [NUMBER, "106540352242923", "106540352242924"]
    codes = [131026, 131047, 131049, 131050, 131000, 130429, 131056, 132015, 131009, 131051,
             131016, 131057, 130472, 130403, 130497, 132005, 100, 190, 368, 131031]
    for n in numbers:
        metrics.set_limiter_rate(n, 80, 64)
        metrics.set_tier_budget(n, 10_000, 4_000)
        for t in range(5):
            for outcome in metrics.SEND_OUTCOMES:
                metrics.record_send(outcome, None, 0.02, n, f"template_{'abcde'[t]}")
        for code in codes:
            metrics.record_send("permanent_error", code, 0.02, n, TEMPLATE)
    metrics.apply_campaign_counts([{"workspace": "ws", "campaign": f"camp_{c}", "state": s, "n": 100}
                                   for c in "abcde" for s in metrics.LEDGER_STATES])
    for team in ("hindi_ent", "tamil_ent", "telugu_music", "bengali", "english", "payments"):
        metrics.set_queue_length(team, 3)
        metrics.observe_first_response(team, 300)
        metrics.observe_resolution(team, 3600)


def scrape(port: int) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    body = conn.getresponse().read()
    conn.close()
    return body


def bench_calls() -> dict[str, float]:
    realistic_series()
    out = {}
    n = 200_000
    for name, fn in (("worker", worker_calls), ("inbound", inbound_calls)):
        best = min(timeit.repeat(lambda fn=fn: [fn(i) for i in range(n)], number=1, repeat=5))
        out[name] = best / n * 1e6
    server, thread = metrics.start_metrics_server(0)
    try:
        port = server.server_port
        size = len(scrape(port))
        c0 = cpu_s()
        for _ in range(50):
            scrape(port)
        out["scrape_ms"] = (cpu_s() - c0) / 50 * 1e3
        out["scrape_kb"] = size / 1024
    finally:
        metrics.stop_metrics_server(server, thread)
    return out


# ---- 2. the pipeline -----------------------------------------------------------------------------------

class MemoryLedger:
    """The LedgerPort in memory: rows handed out in claim order; deferred rows come back."""

    def __init__(self, rows: Sequence[ClaimedRow]) -> None:
        self.queue = deque(rows)
        self.by_id = {r.id: r for r in rows}
        self.total = len(rows)
        self.settled = 0
        self.accepted = 0

    async def claim_batch(self, campaign_ids: Sequence[int], limit: int, *, lease_s: float,
                          owner: str, pair_spacing_s: float = 0.0, tiers: Any = None,
                          senders: Any = None) -> list[ClaimedRow]:
        await trio.lowlevel.checkpoint()
        return [self.queue.popleft() for _ in range(min(limit, len(self.queue)))]

    async def record_results(self, outcomes: Sequence[Outcome], *, owner: str,
                             pair_spacing_s: float = 0.0) -> int:
        await trio.lowlevel.checkpoint()
        for o in outcomes:
            if o.state == "pending":
                self.queue.append(self.by_id[o.id])
            else:
                self.settled += 1
                self.accepted += o.state == "accepted"
        return len(outcomes)

    async def release_claims(self, ids: Sequence[int], *, owner: str) -> None:
        await trio.lowlevel.checkpoint()
        self.queue.extend(self.by_id[i] for i in ids)

    async def expire_leases(self, campaign_ids: Sequence[int]) -> int:
        return 0


class Pacer:
    """`rate` messages/s for the whole process: each take waits for its own slot."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.next = 0.0

    async def take(self, n: int = 1) -> None:
        now = trio.current_time()
        slot = max(self.next, now)
        self.next = slot + n * self.interval
        await trio.sleep_until(slot)


# -- the wiring, as the engine does it (dispatch.py itself is left untouched here)

_OUTCOME_OF = ((ThrottledError, "throttled"), (TransientSendError, "transient_error"),
               (PermanentSendError, "permanent_error"), (CampaignHaltError, "halted"),
               (OutcomeUnknown, "unknown"))


class MeteredLane:
    def __init__(self, lane: Any, number: str, template: str) -> None:
        self.lane, self.number, self.template = lane, number, template

    async def send(self, body: bytes) -> SendResult:
        t0 = time.perf_counter()
        with metrics.LANES_IN_FLIGHT.track_inprogress():
            try:
                result = await self.lane.send(body)
            except Exception as exc:
                outcome = next((o for cls, o in _OUTCOME_OF if isinstance(exc, cls)), "unknown")
                metrics.record_send(outcome, getattr(exc, "code", None), time.perf_counter() - t0,
                                    self.number, self.template)
                raise
        metrics.record_send("accepted", None, time.perf_counter() - t0, self.number, self.template)
        return result

    async def aclose(self) -> None:
        await self.lane.aclose()


class MeteredLedger(MemoryLedger):
    async def claim_batch(self, *args: Any, **kw: Any) -> list[ClaimedRow]:
        t0 = time.perf_counter()
        rows = await super().claim_batch(*args, **kw)
        metrics.observe_claim(time.perf_counter() - t0)
        return rows

    async def record_results(self, *args: Any, **kw: Any) -> int:
        t0 = time.perf_counter()
        n = await super().record_results(*args, **kw)
        metrics.observe_write(time.perf_counter() - t0)
        return n


class MeteredPacer(Pacer):
    async def take(self, n: int = 1) -> None:
        t0 = trio.current_time()
        await super().take(n)
        metrics.record_limiter_wait(NUMBER, trio.current_time() - t0)


def make_rows(n: int) -> list[ClaimedRow]:
    genres = ("comedy", "music", "entertainment", "education")
    langs = ("hi", "ta", "te", "bn", "en")
    return [ClaimedRow(i, 1, f"91{8000000000 + i}", langs[i % 5], 0, {
        "name": f"Creator {i}", "genre": genres[i % 4], "language": langs[i % 5], "city": "Pune",
        "followers": 1000 + i, "external_id": f"cr_{i}", "wa_id": f"91{8000000000 + i}", "attributes": {}})
        for i in range(1, n + 1)]


async def run_pipeline(api_url: str, n: int, rate: float, metered: bool,
                       scrape_every_s: float = 5.0) -> dict[str, float]:
    variants: dict[str, Any] = {}
    for t in load_message_templates(TEMPLATES_JSON):
        if t.name == TEMPLATE:
            variants[t.language] = t
    compiled = compile_campaign(variants, VARS, default_language="hi")
    rows = make_rows(n)
    ledger = (MeteredLedger if metered else MemoryLedger)(rows)
    slot = CampaignSlot(id=1, name="bench", compiled=compiled, limiter=(MeteredPacer if metered else Pacer)(rate),
                        number=NUMBER)
    transport = CloudApiTransport(TransportConfig(api_url=api_url, token="bench"), NUMBER)

    def open_lane(number: str) -> Any:
        lane = transport.open_lane()
        return MeteredLane(lane, number, TEMPLATE) if metered else lane

    async def campaigns() -> list[CampaignSlot]:
        return [slot] if ledger.settled < ledger.total else []

    dispatcher = Dispatcher(ledger, open_lane, campaigns=campaigns, owner="bench",
                            config=DispatchConfig(lanes=16, batch_size=BATCH, idle_poll_s=0.01))
    server = thread = None
    stop = threading.Event()
    scrapes = 0
    if metered:
        server, thread = metrics.start_metrics_server(0)

        def scraper() -> None:
            nonlocal scrapes
            while not stop.wait(scrape_every_s):
                scrape(server.server_port)
                scrapes += 1

        threading.Thread(target=scraper, daemon=True).start()
    c0, t0 = cpu_s(), time.perf_counter()
    try:
        await dispatcher.run()
    finally:
        wall, cpu = time.perf_counter() - t0, cpu_s() - c0
        stop.set()
        if server is not None and thread is not None:
            metrics.stop_metrics_server(server, thread)
    if ledger.accepted != n:
        raise SystemExit(f"pipeline run accepted {ledger.accepted} of {n}: is the sandbox healthy?")
    return {"sent": ledger.accepted, "wall": wall, "cpu_us": cpu / n * 1e6, "scrapes": scrapes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=5000, help="messages per pipeline run")
    ap.add_argument("--rounds", type=int, default=3, help="pairs of runs (without, with metrics)")
    ap.add_argument("--rate", type=float, default=1000.0, help="limiter pace, messages/s")
    ap.add_argument("--scrape-every", type=float, default=5.0, metavar="S",
                    help="scrape /metrics every S seconds during metered runs (Prometheus default: 15)")
    ap.add_argument("--calls-only", action="store_true", help="skip the pipeline runs (no sandbox)")
    args = ap.parse_args()

    calls = bench_calls()
    per_msg = calls["worker"] + calls["inbound"]
    print("\n## metric calls per message (tight loop, best of 5)\n")
    print("| side                                   | µs / message | CPU at 1,000 msg/s |")
    print("|----------------------------------------|--------------|--------------------|")
    print(f"| worker (in-flight, send, wait, batches) | {calls['worker']:>12.2f} | {calls['worker'] / 10:>17.2f}% |")
    print(f"| inbound (3 statuses, 2 latencies, hook) | {calls['inbound']:>12.2f} | {calls['inbound'] / 10:>17.2f}% |")
    print(f"| one /metrics scrape ({calls['scrape_kb']:.0f} KiB)            | {calls['scrape_ms'] * 1e3:>12.0f} |"
          f" {calls['scrape_ms'] / 10:>14.3f}% /s |")
    print("\n(CPU at 1,000 msg/s: share of one core; a scrape is per scrape interval, shown for one per second)")
    if args.calls_only:
        return

    sandbox, api_url = start_sandbox()
    results: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    try:
        trio.run(run_pipeline, api_url, min(args.messages, 500), args.rate, False)  # warm up both sides
        for r in range(args.rounds):
            for metered in ((False, True) if r % 2 == 0 else (True, False)):
                results[metered].append(trio.run(run_pipeline, api_url, args.messages, args.rate, metered,
                                                  args.scrape_every))
    finally:
        sandbox.terminate()
        sandbox.wait(10)
    off = statistics.median(x["cpu_us"] for x in results[False])
    on = statistics.median(x["cpu_us"] for x in results[True])
    rate_off = statistics.median(x["sent"] / x["wall"] for x in results[False])
    rate_on = statistics.median(x["sent"] / x["wall"] for x in results[True])
    print(f"\n## pipeline: {args.messages} messages per run, {args.rounds} rounds, limiter {args.rate:.0f} msg/s,"
          f" scrape every {args.scrape_every:g} s, sandbox in another process, ledger in memory\n")
    print("| metrics | msg/s (median) | CPU µs / message (median) | runs (µs / message)         |")
    print("|---------|----------------|---------------------------|-----------------------------|")
    for label, metered, rate, cpu in (("off", False, rate_off, off), ("on", True, rate_on, on)):
        runs = ", ".join(f"{x['cpu_us']:.0f}" for x in results[metered])
        print(f"| {label:<7} | {rate:>14.0f} | {cpu:>25.0f} | {runs:<27} |")
    print(f"\nmeasured overhead (on − off) / off: {100 * (on - off) / off:+.1f}%  "
          f"(run-to-run noise is ±several %, see the runs column)")
    print(f"calls-based overhead, worker side: {100 * calls['worker'] / off:.2f}%  "
          f"(worker + inbound calls over the worker's CPU per message: {100 * per_msg / off:.2f}%)")
    print("target: < 5%")


if __name__ == "__main__":
    main()
