"""Sandbox throughput: `python -m broadcaster.sandbox` in its own process, hammered by a trio client.

The client keeps N keep-alive connections busy for a few seconds, each POSTing valid template
sends one after another, and prints requests/s, the server's CPU per request (from
/proc/<pid>/stat, Linux) and the implied capacity of one server core (1 / CPU per request).

    python benchmarks/bench_sandbox.py                     # 50 httpcore connections, 5 s
    python benchmarks/bench_sandbox.py --client raw        # one-write raw client: server-bound

With httpcore the client process is usually the bottleneck (≈ 0.8 ms of client CPU per request),
so read the server's capacity from its CPU per request, not from requests/s.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpcore
import orjson
import trio

ROOT = Path(__file__).resolve().parents[1]
NUMBER = "106540352242922"
TEMPLATES = ROOT / "examples" / "message_templates.json"


def payload(i: int) -> bytes:
    """A valid daily_campaign_invite (hi) send to a distinct recipient."""
    return orjson.dumps({
        "messaging_product": "whatsapp", "recipient_type": "individual",
        "to": f"+9198{i % 100_000_000:08d}", "type": "template",
        "biz_opaque_callback_data": f"bench:{i}",
        "template": {"name": "daily_campaign_invite", "language": {"code": "hi"}, "components": [
            {"type": "body", "parameters": [{"type": "text", "text": t}
                                            for t in ("Ravi", "Comedy", "#MonsoonMasti", "9 PM")]},
            {"type": "button", "sub_type": "url", "index": "0",
             "parameters": [{"type": "text", "text": f"c{i}"}]}]},
    })


def start_sandbox(args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "broadcaster.sandbox", "--host", "127.0.0.1", "--port", "0",
           "--mps", str(args.mps)]
    if not args.no_templates:
        cmd += ["--templates", str(TEMPLATES)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"(http://\S+)", line)
    if not match:
        proc.kill()
        raise SystemExit(f"sandbox did not start: {line!r}")
    return proc, match.group(1)


def process_cpu_s(pid: int) -> float | None:
    """utime + stime of a process in seconds (Linux /proc), or None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def httpcore_worker(base_url: str, deadline: float, counts: Counter[int],
                          bodies: list[bytes]) -> None:
    url = f"{base_url}/{NUMBER}/messages".encode()
    host, port = base_url.split("//")[1].split("/")[0].split(":")
    headers = [(b"content-type", b"application/json"), (b"authorization", b"Bearer bench")]
    origin = httpcore.Origin(b"http", host.encode(), int(port))
    async with httpcore.AsyncHTTPConnection(origin) as conn:
        i = 0
        while time.monotonic() < deadline:
            response = await conn.request(b"POST", url, headers=headers,
                                          content=bodies[i % len(bodies)])
            counts[response.status] += 1
            i += 1


async def raw_worker(base_url: str, deadline: float, counts: Counter[int],
                     bodies: list[bytes]) -> None:
    """One write per request, minimal response parsing: the cheapest honest client."""
    host, port = base_url.split("//")[1].split("/")[0].split(":")
    path = f"/{base_url.split('//')[1].split('/', 1)[1]}/{NUMBER}/messages".encode()
    stream = await trio.open_tcp_stream(host, int(port))
    buf = b""
    i = 0
    async with stream:
        while time.monotonic() < deadline:
            body = bodies[i % len(bodies)]
            await stream.send_all(b"POST %s HTTP/1.1\r\nHost: %s\r\ncontent-type: application/"
                                  b"json\r\nauthorization: Bearer bench\r\ncontent-length: %d"
                                  b"\r\n\r\n%s" % (path, host.encode(), len(body), body))
            while True:
                end = buf.find(b"\r\n\r\n")
                if end >= 0:
                    head = buf[:end].lower()
                    at = head.find(b"content-length: ")
                    length = int(head[at + 16:].split(b"\r\n", 1)[0])
                    if len(buf) >= end + 4 + length:
                        counts[int(buf[9:12])] += 1
                        buf = buf[end + 4 + length:]
                        break
                chunk = await stream.receive_some(65536)
                if not chunk:
                    raise ConnectionError("sandbox closed the connection")
                buf += chunk
            i += 1


async def hammer(base_url: str, args: argparse.Namespace) -> Counter[int]:
    counts: Counter[int] = Counter()
    bodies = [payload(i) for i in range(10_000)]
    worker = raw_worker if args.client == "raw" else httpcore_worker
    deadline = time.monotonic() + args.seconds
    async with trio.open_nursery() as nursery:
        for _ in range(args.connections):
            nursery.start_soon(worker, base_url, deadline, counts, bodies)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--client", choices=["httpcore", "raw"], default="httpcore")
    parser.add_argument("--mps", type=int, default=0, help="sandbox per-number limit (0 = off)")
    parser.add_argument("--no-templates", action="store_true",
                        help="skip template validation in the sandbox")
    args = parser.parse_args()

    proc, base_url = start_sandbox(args)
    try:
        trio.run(hammer, base_url, argparse.Namespace(**{**vars(args), "seconds": 0.5}))  # warm
        server_cpu0 = process_cpu_s(proc.pid)
        client_cpu0 = time.process_time()
        wall0 = time.monotonic()
        counts = trio.run(hammer, base_url, args)
        wall = time.monotonic() - wall0
        client_cpu = time.process_time() - client_cpu0
        server_cpu1 = process_cpu_s(proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()

    total = sum(counts.values())
    print(f"sandbox bench: {args.connections} {args.client} connections, {wall:.1f} s, "
          f"templates {'off' if args.no_templates else 'on'}, mps {args.mps or 'unlimited'}")
    print(f"  requests      {total} ({dict(counts)})")
    print(f"  throughput    {total / wall:,.0f} req/s")
    print(f"  client CPU    {client_cpu / total * 1e6:,.0f} µs/request")
    if server_cpu0 is not None and server_cpu1 is not None:
        per_request = (server_cpu1 - server_cpu0) / total
        print(f"  server CPU    {per_request * 1e6:,.0f} µs/request "
              f"(busy {100 * (server_cpu1 - server_cpu0) / wall:.0f}% of one core)")
        print(f"  capacity      ≈ {1 / per_request:,.0f} req/s per server core")
    if set(counts) - {200}:
        raise SystemExit("non-200 answers: the benchmark load was not all accepted")


if __name__ == "__main__":
    main()
