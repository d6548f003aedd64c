"""Reliability with real processes: several workers on one number, kill -9 and restart, two cron
launchers at once. Slow: `make test` runs them as its second step (`pytest -m slow`).

Each test prints its figures (recipients, duplicates at the provider, lost, unknown settled) and
asserts duplicates = 0 and lost = 0.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
import trio

from broadcaster.db import open_db
from broadcaster.numbers import add_number
from tests.chaos.procs import Cli, Sandbox, base_env, free_port, run_cli, wait_for_port
from tests.integration.factories import campaign_for

pytestmark = pytest.mark.slow


def sql(db_url: str, query: str, *args: object) -> list:
    async def main() -> list:
        async with open_db(db_url, max_size=1) as db:
            return [dict(r) for r in await db.fetch(query, *args)]
    return trio.run(main)


def make_campaign(db_url: str, uniq: str, n: int, number: str, mps: int, *, grace_s: int = 900) -> str:
    phones = [f"91{random.choice('6789')}{uniq[:4].encode().hex()[:4]}{i:05d}"[:12] for i in range(n)]
    phones = [p if len(p) == 12 else p.ljust(12, "0") for p in phones]

    async def main() -> str:
        async with open_db(db_url, max_size=2) as db:
            c = await campaign_for(db, uniq, phones)  # creates the workspace the number belongs to
            await add_number(db, number, workspace=f"ws_{uniq}", mps=mps)
            await db.execute("UPDATE campaigns SET phone_number_id = $2, unknown_grace_s = $3 WHERE id = $1",
                             c.id, number, grace_s)
            return c.name
    return trio.run(main)


def ledger_states(db_url: str, name: str) -> dict[str, int]:
    rows = sql(db_url, "SELECT l.state, count(*)::int AS n FROM ledger l JOIN campaigns c ON c.id = l.campaign_id"
                       " WHERE c.name = $1 GROUP BY 1", name)
    return {r["state"]: r["n"] for r in rows}


def wait_until(pred, timeout: float, step: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return False


def test_three_workers_share_one_number_at_200_per_s(db_url: str, uniq: str, tmp_path: Path) -> None:
    """3 worker processes, one number at 200/s: the provider never sees more than 200 in any 1-s
    window, and over 10 s of steady sending it gets at least 97% of 2,000."""
    number = f"7{random.randint(10**13, 10**14 - 1)}"
    sandbox = Sandbox("--mps", "0")
    workers: list[Cli] = []
    try:
        name = make_campaign(db_url, uniq, 3000, number, mps=200)
        env = base_env(db_url, sandbox.base_url, number)
        r = run_cli(env, "campaign", "launch", name, "--detach")
        assert r.returncode == 0, r.stderr
        workers = [Cli(env, "worker", "--lanes", "16", "--batch-size", "50", log=tmp_path / f"w{i}.log")
                   for i in range(3)]
        assert wait_until(lambda: sandbox.stats()["accepted"] > 200, 60), \
            f"workers never started sending: {sandbox.stats()} {ledger_states(db_url, name)}"
        time.sleep(12)
        stats = sandbox.stats()
    finally:
        for w in workers:
            w.stop()
        sandbox.stop()
    series = dict((s, n) for s, n in stats["per_second"])
    seconds = sorted(series)
    # steady state: drop the first and last (partial) seconds of sending
    steady = [series.get(s, 0) for s in range(seconds[1], seconds[-1])]
    best10 = max(sum(steady[i:i + 10]) for i in range(0, max(1, len(steady) - 9)))
    peak = stats["max_per_second"][number]  # the sandbox's count per (calendar) second
    print(f"\n3 workers @200/s: seconds={len(steady)} peak per second={peak} (in any sliding 1-s interval "
          f"{stats['max_in_any_second'][number]}, delivery delays included) best 10 s={best10} "
          f"({best10 / 20:.1f}% of 2000) duplicates={stats['duplicates']}")
    assert peak <= 200
    assert best10 >= 0.97 * 2000
    assert stats["duplicates"] == 0


def test_kill_9_worker_ten_times_nobody_twice_nobody_lost(db_url: str, uniq: str, tmp_path: Path) -> None:
    """A 20k campaign; a worker is killed with SIGKILL at random moments 10 times and restarted.
    Status webhooks (sandbox → inbound receiver) settle rows whose answer was lost with the worker;
    the rest come back after the lease and grace period. No recipient is accepted twice, none lost."""
    n = 20_000
    number = f"7{random.randint(10**13, 10**14 - 1)}"
    port = free_port()
    inbound_env = base_env(db_url)
    inbound = Cli(inbound_env, "inbound", "serve", "--port", str(port), log=tmp_path / "inbound.log")
    sandbox = Sandbox("--mps", "0", "--webhook-url", f"http://127.0.0.1:{port}/webhook", "--read-rate", "0")
    worker: Cli | None = None
    rng = random.Random(uniq)
    try:
        wait_for_port(port)
        name = make_campaign(db_url, uniq, n, number, mps=1000, grace_s=4)
        env = base_env(db_url, sandbox.base_url, number)
        assert run_cli(env, "campaign", "launch", name, "--detach").returncode == 0
        for _ in range(10):
            worker = Cli(env, "worker", "--lanes", "16", "--batch-size", "100", "--lease", "3",
                         log=tmp_path / "worker.log")
            time.sleep(rng.uniform(1.5, 4.0))
            worker.kill9()
        worker = Cli(env, "worker", "--lanes", "16", "--batch-size", "100", "--lease", "3",
                     log=tmp_path / "worker.log")
        done = wait_until(lambda: sql(db_url, "SELECT state FROM campaigns WHERE name = $1", name)[0]["state"]
                          == "completed", 300, step=1.0)
        worker.stop()
        stats = sandbox.stats()
        recipients = sandbox.recipients()
    finally:
        if worker is not None:
            worker.stop()
        sandbox.stop()
        inbound.stop()
    states = ledger_states(db_url, name)
    settled = sql(db_url, "SELECT unknown_resolution AS r, count(*)::int AS n FROM ledger l JOIN campaigns c"
                          " ON c.id = l.campaign_id WHERE c.name = $1 AND unknown_resolution IS NOT NULL"
                          " GROUP BY 1", name)
    ours = sql(db_url, "SELECT l.wa_id FROM ledger l JOIN campaigns c ON c.id = l.campaign_id WHERE c.name = $1",
               name)
    dupes = sum(1 for r in ours if recipients.get(r["wa_id"], 0) > 1)
    lost = sum(1 for r in ours if recipients.get(r["wa_id"], 0) == 0)
    print(f"\nkill -9 x10: recipients={n} states={states} duplicates at provider={dupes} lost={lost} "
          f"unknown settled={ {r['r']: r['n'] for r in settled} } provider requests={stats['requests']}")
    assert done, f"campaign did not complete: {states}"
    assert dupes == 0
    assert lost == 0
    assert sum(states.get(s, 0) for s in ("accepted", "sent", "delivered", "read")) == n


def test_two_launchers_at_once_one_runs_the_other_says_already_running(db_url: str, uniq: str) -> None:
    """Two cron runs of `campaign launch` at the same moment: one sends, the other exits 0."""
    number = f"7{random.randint(10**13, 10**14 - 1)}"
    sandbox = Sandbox("--mps", "0")
    try:
        name = make_campaign(db_url, uniq, 500, number, mps=1000)
        env = base_env(db_url, sandbox.base_url, number)
        import subprocess
        import sys

        from tests.chaos.procs import ROOT
        procs = [subprocess.Popen([sys.executable, "-m", "cli", "campaign", "launch", name, "--quiet"], cwd=ROOT,
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        outs = [p.communicate(timeout=180) for p in procs]
        codes = [p.returncode for p in procs]
        recipients = sandbox.recipients()
    finally:
        sandbox.stop()
    assert codes == [0, 0], outs
    said = [o[0] for o in outs]
    assert sum("already running" in s for s in said) == 1, said
    ours = sql(db_url, "SELECT l.wa_id, l.state FROM ledger l JOIN campaigns c ON c.id = l.campaign_id"
                       " WHERE c.name = $1", name)
    assert len(ours) == 500
    assert all(recipients.get(r["wa_id"]) == 1 for r in ours), "one request per recipient"


def test_sigterm_stops_cleanly_and_a_restart_completes(db_url: str, uniq: str, tmp_path: Path) -> None:
    """SIGTERM mid-campaign: the worker stops claiming, records in-flight outcomes, exits 0 and
    leaves no row claimed; a new worker finishes the rest; nobody is sent twice."""
    import signal as _signal

    number = f"7{random.randint(10**13, 10**14 - 1)}"
    sandbox = Sandbox("--mps", "0")
    try:
        name = make_campaign(db_url, uniq, 1500, number, mps=150)
        env = base_env(db_url, sandbox.base_url, number)
        assert run_cli(env, "campaign", "launch", name, "--detach").returncode == 0
        worker = Cli(env, "worker", "--lanes", "8", log=tmp_path / "w.log")
        assert wait_until(lambda: sandbox.stats()["accepted"] > 300, 60)
        worker.proc.send_signal(_signal.SIGTERM)
        code = worker.proc.wait(30)
        mid = ledger_states(db_url, name)
        worker = Cli(env, "worker", "--lanes", "8", log=tmp_path / "w.log")
        done = wait_until(lambda: ledger_states(db_url, name).get("accepted", 0) == 1500, 120)
        worker.stop()
        recipients = sandbox.recipients()
    finally:
        sandbox.stop()
    print(f"\nSIGTERM: exit {code}, states after stop {mid}, provider duplicates "
          f"{sum(1 for n in recipients.values() if n > 1)}")
    assert code == 0
    assert mid.get("claimed", 0) == 0 and mid.get("unknown", 0) == 0, mid
    assert done, ledger_states(db_url, name)
    assert all(n == 1 for n in recipients.values())


def _local_cluster() -> str | None:
    import shutil
    if not shutil.which("pg_ctlcluster") or not Path("/etc/postgresql").is_dir():
        return None
    versions = sorted(p.name for p in Path("/etc/postgresql").iterdir())
    return versions[-1] if versions else None


def test_postgres_restart_mid_campaign_worker_reconnects_nothing_lost(db_url: str, uniq: str,
                                                                    tmp_path: Path) -> None:
    """The cluster is stopped and started under a sending worker: it pauses, reconnects and
    finishes; every recipient accepted exactly once."""
    import subprocess

    version = _local_cluster()
    if version is None or "127.0.0.1:5432" not in db_url:
        pytest.skip("needs the machine's own cluster on 127.0.0.1:5432 (pg_ctlcluster) to restart it")
    number = f"7{random.randint(10**13, 10**14 - 1)}"
    sandbox = Sandbox("--mps", "0")
    worker = None
    try:
        name = make_campaign(db_url, uniq, 2000, number, mps=200)
        env = base_env(db_url, sandbox.base_url, number)
        assert run_cli(env, "campaign", "launch", name, "--detach").returncode == 0
        worker = Cli(env, "worker", "--lanes", "8", log=tmp_path / "w.log")
        assert wait_until(lambda: sandbox.stats()["accepted"] > 400, 60)
        ctl = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]
        subprocess.run([*ctl, "stop", "-m", "fast"], check=True, capture_output=True, timeout=60)
        during = sandbox.stats()["accepted"]
        time.sleep(3)
        subprocess.run([*ctl, "start"], check=True, capture_output=True, timeout=60)
        done = wait_until(lambda: ledger_states(db_url, name).get("accepted", 0) == 2000, 180, step=1.0)
        code = worker.stop()
        recipients = sandbox.recipients()
    finally:
        if worker is not None:
            worker.stop()
        sandbox.stop()
    states = ledger_states(db_url, name)
    dupes = sum(1 for n in recipients.values() if n > 1)
    print(f"\npostgres restart: accepted when stopped {during}, final {states}, provider duplicates {dupes}, "
          f"worker exit {code}")
    assert done, states
    assert dupes == 0
    assert code == 0
    assert "database unavailable" in (tmp_path / "w.log").read_text()
