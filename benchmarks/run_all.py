"""Run every benchmark, print each table, and write them all to benchmarks/RESULTS.md with the
machine description, the date and the goals (issue 11).

    python benchmarks/run_all.py            # the standard sizes (≈ 10-20 minutes on 2 cores)
    python benchmarks/run_all.py --quick    # small sizes, to check the scripts run (≈ 3 minutes)
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

GOALS = """| what | goal | where it comes from |
|---|---|---|
| end-to-end msg/s, one worker, limiter open | ≥ 1,000 msg/s | issue 6 |
| engine / bare httpcore-lane loop | ≥ 0.6 | issue 6 |
| engine / naive asyncio+httpx peer | reported | issue 11 |
| limiter: achieved / configured at 80 and 1,000 msg/s | ≥ 0.97, never over per second | issue 5 |
| 1M-recipient campaign peak RSS | < 200 MB, flat | issue 6 |
| webhook ingest (stored + applied) | ≥ 3,000 statuses/s, p99 printed | issue 7 |
| contact import | 1M rows < 60 s | issue 3 |
| segment count at 1M contacts | < 200 ms | issue 3 |
| render per message | well under 50 µs | issue 4 |
| metrics CPU per message | < 5% | issue 10 |
"""


def suites(quick: bool) -> list[tuple[str, list[str]]]:
    n = "20000" if quick else "100000"
    rows = "100000" if quick else "1000000"
    return [
        ("End-to-end dispatch (engine vs bare lanes vs naive peer)",
         ["benchmarks/bench_dispatch.py", "--recipients", n]),
        ("1M-recipient campaign: peak RSS and time to first message",
         ["benchmarks/bench_dispatch.py", "--rss", "--recipients", "200000" if quick else "1000000",
          "--rss-seconds", "20" if quick else "60"]),
        ("Limiter accuracy", ["benchmarks/bench_limiter_accuracy.py", "--seconds", "6" if quick else "10"]),
        ("Limiter CPU per call", ["benchmarks/bench_limiter_cpu.py"]),
        ("Webhook ingest", ["benchmarks/bench_webhooks.py", "--messages", "3000" if quick else "20000"]),
        ("Contact import and segment count", ["benchmarks/bench_audience.py", "--rows", rows]),
        ("Rendering", ["benchmarks/bench_render.py"]),
        ("Sandbox throughput", ["benchmarks/bench_sandbox.py", "--seconds", "3" if quick else "5"]),
        ("Metrics cost", ["benchmarks/bench_metrics.py", "--calls-only"] if quick else ["benchmarks/bench_metrics.py"]),
    ]


def _clip(text: str, head: int = 4000, tail: int = 6000) -> str:
    """Long outputs keep their start (the tables) and their end (the verdicts)."""
    if len(text) <= head + tail:
        return text
    return text[:head] + "\n[… cut …]\n" + text[-tail:]


def _merge(old: str, new: str) -> str:
    """Sections (`## title`) of `new` replace those of `old`; the header is `new`'s."""
    def sections(text: str) -> tuple[str, dict[str, str]]:
        parts = text.split("\n## ")
        return parts[0], {p.split("\n", 1)[0]: "## " + p for p in parts[1:]}

    _, old_parts = sections(old)
    head, new_parts = sections(new)
    merged = {**old_parts, **new_parts}
    return "\n".join([head, *merged.values()])


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()
    return (f"{platform.node()}: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
            f"{platform.platform()}; load average at start {load[0]:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", help="run only suites whose title contains this text")
    args = ap.parse_args()
    out = [f"# Benchmark results\n\nMeasured {time.strftime('%Y-%m-%d %H:%M %Z')} on {machine()}.\n",
           "Absolute numbers vary ±30% run to run on a shared machine; ratios measured in one run "
           "against the same sandbox hold better.\n", "## Goals\n", GOALS]
    failed = []
    for title, cmd in suites(args.quick):
        if args.only and args.only.lower() not in title.lower():
            continue
        print(f"\n=== {title}: {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True)
        took = time.perf_counter() - t0
        print(_clip(proc.stdout))
        if proc.returncode != 0:
            failed.append(title)
            print(proc.stderr[-3000:], file=sys.stderr)
        out.append(f"## {title}\n\n`python {' '.join(cmd)}` ({took:.0f} s"
                   f"{', FAILED: ' + proc.stderr.strip().splitlines()[-1] if proc.returncode else ''})\n")
        out.append("```\n" + _clip(proc.stdout.strip()) + "\n```\n")
    results = ROOT / "benchmarks" / "RESULTS.md"
    text = "\n".join(out)
    if args.only and results.exists():  # replace just the suites run now, keep the others
        text = _merge(results.read_text(encoding="utf-8"), text)
    results.write_text(text, encoding="utf-8")
    print(f"\nwrote benchmarks/RESULTS.md{'; failed: ' + ', '.join(failed) if failed else ''}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
