"""Ctrl-C on a foreground `campaign launch`: in-flight sends are recorded, the campaign is paused
(not left "running" with nobody sending), and `campaign resume` finishes it, nobody twice."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import trio

from broadcaster.db import open_db
from tests.chaos.procs import ROOT, Sandbox, base_env
from tests.integration.factories import campaign_for


def test_ctrl_c_pauses_and_resume_completes(db_url: str, uniq: str, phone_factory) -> None:
    phones = [phone_factory() for _ in range(120)]

    async def setup() -> str:
        async with open_db(db_url, max_size=2) as db:
            return (await campaign_for(db, uniq, phones)).name

    name = trio.run(setup)
    sandbox = Sandbox("--mps", "20")  # slow enough to interrupt mid-way
    try:
        env = base_env(db_url, sandbox.base_url)
        proc = subprocess.Popen([sys.executable, "-m", "cli", "campaign", "launch", name, "--quiet"], cwd=ROOT,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while sandbox.stats()["accepted"] < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert f"continue with `broadcaster campaign resume {name}`" in out

        async def state() -> tuple[str, str, dict[str, int]]:
            async with open_db(db_url, max_size=1) as db:
                c = await db.fetchrow("SELECT id, state, pause_reason FROM campaigns WHERE name = $1", name)
                rows = await db.fetch("SELECT state, count(*)::int AS n FROM ledger WHERE campaign_id = $1"
                                      " GROUP BY 1", c["id"])
                return c["state"], c["pause_reason"], {r["state"]: r["n"] for r in rows}

        st, reason, counts = trio.run(state)
        assert (st, reason) == ("paused", "interrupted")
        assert counts.get("claimed", 0) == 0, counts
        resumed = subprocess.run([sys.executable, "-m", "cli", "campaign", "resume", name, "--quiet"], cwd=ROOT,
                                 env=env, capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr
        st, _, counts = trio.run(state)
        assert st == "completed" and counts == {"accepted": 120}, counts
        seen = sandbox.recipients()
        assert all(seen.get(p) == 1 for p in phones)
    finally:
        sandbox.stop()
