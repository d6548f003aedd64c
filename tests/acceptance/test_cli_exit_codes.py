"""Exit codes a cron script can act on: a foreground send refuses to start without a token, and
one that the engine paused (circuit breaker) does not exit 0."""

from __future__ import annotations

import trio

from broadcaster.db import open_db
from tests.chaos.procs import Sandbox, base_env, run_cli
from tests.integration.factories import campaign_for


def _state(db_url: str, name: str) -> tuple[str, str | None, int]:
    async def read() -> tuple[str, str | None, int]:
        async with open_db(db_url, max_size=1) as db:
            c = await db.fetchrow("SELECT id, state, pause_reason FROM campaigns WHERE name = $1", name)
            rows = await db.fetchval("SELECT count(*) FROM ledger WHERE campaign_id = $1", c["id"])
            return c["state"], c["pause_reason"], rows

    return trio.run(read)


def test_launch_without_a_token_names_it_and_freezes_nothing(db_url: str, uniq: str, phone_factory) -> None:
    async def setup() -> str:
        async with open_db(db_url, max_size=2) as db:
            return (await campaign_for(db, uniq, [phone_factory() for _ in range(3)])).name

    name = trio.run(setup)
    env = base_env(db_url, "http://127.0.0.1:9")
    del env["WHATSAPP_TOKEN"]
    for args in (("campaign", "launch", name), ("worker",)):
        r = run_cli(env, *args)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "WHATSAPP_TOKEN" in r.stderr
    assert _state(db_url, name) == ("draft", None, 0)


def test_a_launch_the_circuit_breaker_paused_exits_3(db_url: str, uniq: str, phone_factory) -> None:
    async def setup() -> str:
        async with open_db(db_url, max_size=2) as db:
            return (await campaign_for(db, uniq, [phone_factory() for _ in range(40)])).name

    name = trio.run(setup)
    sandbox = Sandbox()
    try:
        sandbox.call("POST", "faults", {"template_status": {"daily_campaign_invite/hi": "PAUSED"}})
        env = base_env(db_url, sandbox.base_url)
        r = run_cli(env, "campaign", "launch", name, "--quiet")
        assert r.returncode == 3, r.stdout + r.stderr
        assert "circuit_breaker:132015" in r.stdout and f"campaign resume {name}" in r.stdout
        state, reason, _ = _state(db_url, name)
        assert (state, reason) == ("paused", "circuit_breaker:132015")
        sandbox.call("POST", "faults", {})
        r = run_cli(env, "campaign", "resume", name, "--quiet")
        assert r.returncode == 0, r.stdout + r.stderr
        assert _state(db_url, name)[0] == "completed"
    finally:
        sandbox.stop()
