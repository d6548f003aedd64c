"""`broadcaster scheduler …`: fire due campaign schedules (`tick` once, or `run` forever).

Both are safe to run several at once (cron every minute, plus a long-running one, on several
hosts): a due slot is claimed atomically and started once. They only launch; workers send.
"""

from __future__ import annotations

import functools
import logging
import signal
from datetime import UTC, datetime

import trio
import typer

from broadcaster import schedule as sched
from broadcaster.commands.common import console, database, run, setup_logging
from broadcaster.errors import UsageError

app = typer.Typer(help="Fire scheduled and recurring campaigns (launch only; workers send).",
                  no_args_is_help=True)

HORIZON_HELP = ("a slot missed by more than this many seconds is skipped instead of started late "
                f"(default {sched.DEFAULT_HORIZON_S:.0f})")


def _print(firing: sched.Firing) -> None:
    slot = f"{firing.slot:%Y-%m-%d %H:%M} UTC"
    if firing.outcome in ("started", "already_running"):
        late = f", {firing.late_s:.0f} s late" if firing.late_s > sched.LATE_AFTER_S else ""
        skipped = f", {firing.skipped_slots} older missed slot(s) skipped" if firing.skipped_slots else ""
        verb = "launched" if firing.outcome == "started" else "already running:"
        console.print(f"{firing.campaign}: {verb} '{firing.run}' for {slot} "
                      f"({firing.frozen_rows} recipients frozen{late}{skipped})")
    elif firing.outcome == "missed":
        console.print(f"{firing.campaign}: slot {slot} missed (older than the horizon); not started")
    elif firing.outcome == "failed":
        console.print(f"{firing.campaign}: slot {slot} failed: {firing.error}")
    else:
        console.print(f"{firing.campaign}: schedule {firing.outcome}")


def _parse_now(value: str | None) -> datetime:
    if value is None:
        return sched.utc_now()
    try:
        now = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value)
    except ValueError:
        now = None
    if now is None or now.tzinfo is None:
        raise UsageError(f"--now {value!r}: expected an ISO time with offset, e.g. 2026-12-04T04:30:00Z")
    return now.astimezone(UTC)


@app.command("tick")
def tick_cmd(
    horizon: float = typer.Option(sched.DEFAULT_HORIZON_S, "--horizon", envvar="BROADCASTER_SCHEDULE_HORIZON_S",
                                  help=HORIZON_HELP),
    now: str | None = typer.Option(None, "--now", help="evaluate as of this instant (ISO with offset; "
                                                         "for checks and tests), default: now"),
) -> None:
    """One pass: launch every campaign whose slot is due (for system cron, every minute)."""

    async def main() -> None:
        at = _parse_now(now)
        async with database() as db:
            firings = await sched.tick(db, at, horizon_s=sched.horizon_from(horizon))
        for firing in firings:
            _print(firing)
        if not firings:
            console.print("nothing due")

    run(main)


@app.command("run")
def run_cmd(
    horizon: float = typer.Option(sched.DEFAULT_HORIZON_S, "--horizon", envvar="BROADCASTER_SCHEDULE_HORIZON_S",
                                  help=HORIZON_HELP),
    poll: float = typer.Option(sched.POLL_S, "--poll", help="look for new schedules at least this often, s"),
) -> None:
    """Long-running: launch campaigns as their slots come due. Ctrl-C / SIGTERM stop it."""

    async def main() -> None:
        async with database() as db, trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_signal, nursery.cancel_scope)
            await nursery.start(functools.partial(
                sched.run_scheduler, db, horizon_s=sched.horizon_from(horizon), poll_s=max(1.0, poll),
                on_firing=_print))
            console.print(f"scheduler started (horizon {horizon:.0f} s); Ctrl-C or SIGTERM stops it")

    run(main)


async def _cancel_on_signal(scope: trio.CancelScope) -> None:
    """SIGINT/SIGTERM: cancel; a firing in progress rolls back and the next ticker redoes it."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            console.print("scheduler stopping")
            scope.cancel()
            return


if __name__ == "__main__":  # `python -m broadcaster.commands.scheduler tick` (before cli.py joins it)
    setup_logging(verbose=False)
    logging.getLogger("broadcaster.schedule").setLevel(logging.INFO)
    app()
