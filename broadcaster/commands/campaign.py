"""`broadcaster campaign …` and `broadcaster worker`: create, launch, watch, control, report."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import orjson
import trio
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from broadcaster import campaigns as camp
from broadcaster import numbers as nums
from broadcaster import schedule as sched
from broadcaster.campaign_run import CampaignRunner, RunOptions
from broadcaster.commands.common import console, database, err_console, maybe_start_metrics, run, settings
from broadcaster.dispatch import DispatchConfig
from broadcaster.errors import ConfigError, UsageError
from broadcaster.health import describe_pause
from broadcaster.ledger import LedgerStore
from broadcaster.report import campaign_report
from broadcaster.segment_store import get_segment

app = typer.Typer(help="Campaigns: create, launch, pause/resume/cancel, status, report.",
                  no_args_is_help=True)


@app.command("create")
def create_cmd(
    name: str = typer.Argument(..., help="unique campaign name"),
    segment: str = typer.Option(..., "--segment", help="segment name (see `broadcaster segments list`)"),
    template: str = typer.Option(..., "--template", help="template name (see `broadcaster templates list`)"),
    var: list[str] = typer.Option([], "--var", help="KEY=VALUE: 1=contact.name, header.link=https://…, "
                                                    "button.0=contact.external_id, or a constant"),
    language: str | None = typer.Option(None, "--language", help="default template language (else en)"),
    number: list[str] = typer.Option([], "--number", help="sender phone_number_id (else the workspace's numbers, "
                                     "else WHATSAPP_PHONE_NUMBER_ID); "
                                     "repeat for a pool: the next number takes over when one's daily tier is used up"),
    unknown_policy: str = typer.Option("resend", "--unknown-policy",
                                       help="rows still unknown after the grace period: resend|fail"),
    unknown_grace: int = typer.Option(900, "--unknown-grace", help="grace period for unknown rows, s"),
    at: str | None = typer.Option(None, "--at", help="launch once at this time: '2026-12-04 10:00' (read in "
                                                     "--tz) or ISO with offset '2026-12-04T10:00+05:30'"),
    every: str | None = typer.Option(None, "--every", help="recurring: cron '0 10 * * *' (read in --tz); each "
                                                           "firing creates and launches a new run"),
    tz: str | None = typer.Option(None, "--tz", help="IANA zone for --at/--every (default: the workspace's, "
                                                     "Asia/Kolkata)"),
) -> None:
    """Create a draft campaign (checks segment, template and variables first); --at / --every schedule it
    (`broadcaster scheduler tick|run` launches it)."""

    async def main() -> None:
        camp.check_new_campaign(name, unknown_grace_s=unknown_grace)
        variables = camp.parse_var_options(var)
        async with database() as db:
            request = None
            if at is not None or every is not None or tz is not None:  # checked before anything is written
                request = await sched.prepare_request(db, segment=segment, at=at, every=every, tz=tz)
            numbers = number
            if numbers:  # each configured for the segment's workspace (or the default): no typo survives
                workspace = (await get_segment(db, segment)).workspace
                numbers = await nums.check_campaign_numbers(
                    db, numbers, workspace=workspace, default_number=settings().whatsapp_phone_number_id)
            c = await camp.create_campaign(
                db, name, segment=segment, template=template, variables=variables,
                default_language=language, phone_number_id=numbers[0] if numbers else None,
                number_pool=numbers if len(numbers) > 1 else None, unknown_policy=unknown_policy,
                unknown_grace_s=unknown_grace)
            if request is not None:
                await sched.schedule_campaign(db, c.name, request)
        state = "draft" if request is None else ("scheduled" if request.kind == "once" else "recurring")
        console.print(f"created campaign '{c.name}' ({state}): segment {c.segment}, template "
                      f"{c.template_name}, default language {c.default_language}")
        if request is not None and request.kind == "once":
            console.print(f"launches at {request.upcoming(1)[0]}")
        elif request is not None:
            console.print(f"every '{request.cron}' in {request.timezone}; each run is a new campaign "
                          f"({c.name}-YYYYMMDD-HHMM); next runs:")
            for line in request.upcoming(3):
                console.print(f"  {line}")

    run(main)


OPERATOR_PAUSES = frozenset({"manual", "interrupted"})  # pauses a person asked for
EXIT_PAUSED_BY_ENGINE = 3  # launch/resume in the foreground ended with the campaign paused by the engine


async def _send_in_foreground(name: str, options: RunOptions, *, quiet: bool) -> None:
    async with database(max_size=8) as db:
        existing = await camp.get_campaign(db, name)
        pool = await nums.sender_pool(db, workspace=existing.workspace, phone_number_id=existing.phone_number_id,
                                      number_pool=existing.number_pool,
                                      default_number=settings().whatsapp_phone_number_id)
        if not pool:  # checked before anything is written
            raise ConfigError(f"no sender number for workspace '{existing.workspace}': `broadcaster numbers add "
                              f"PHONE_NUMBER_ID --workspace {existing.workspace}`, or set WHATSAPP_PHONE_NUMBER_ID")
        settings().require("whatsapp_token")
        result = await camp.launch(db, name)
        c = result.campaign
        if not result.started_now:
            console.print(f"campaign '{name}' is already running (another launcher or a worker "
                          "has it); nothing to do")
            return
        console.print(f"launched '{name}': {result.frozen_rows} recipients frozen into the ledger")
        await _drive(db, c.id, options, quiet=quiet)


async def _drive(db: camp.Database, campaign_id: int, options: RunOptions, *, quiet: bool) -> None:
    """Run the dispatcher for one campaign with a progress bar; SIGINT/SIGTERM stop it cleanly."""
    options.only_campaign = campaign_id
    maybe_start_metrics()
    runner = CampaignRunner(db, settings(), options)
    ledger = LedgerStore(db)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, runner, nursery.cancel_scope)
        progress_scope = trio.CancelScope()
        if not quiet:
            nursery.start_soon(_progress, ledger, campaign_id, progress_scope)
        await runner.run()
        progress_scope.cancel()
        nursery.cancel_scope.cancel()
    if runner.dispatcher.stopping:
        # stopped by Ctrl-C/SIGTERM: pause it, so it is not left "running" with nobody sending
        await camp.pause_by_id(db, campaign_id, reason="interrupted")
    counts = await ledger.counts(campaign_id)
    c = await camp.get_campaign_by_id(db, campaign_id)
    state = c.state + (f" ({c.pause_reason})" if c.pause_reason else "")
    reached = sum(counts[s] for s in ("accepted", "sent", "delivered", "read"))
    if c.state == "paused":
        console.print(f"continue with `broadcaster campaign resume {c.name}`")
    console.print(f"campaign '{c.name}' is {state}: accepted by WhatsApp {reached}, failed "
                  f"{counts['failed']}, skipped {counts['skipped']}, unknown {counts['unknown']}, "
                  f"pending {counts['pending']}"
                  + (f", claimed (in flight) {counts['claimed']}" if counts["claimed"] else ""))
    if c.state == "paused" and c.pause_reason not in OPERATOR_PAUSES:
        # the engine stopped it (circuit breaker, tier, health guard, …): scripts must see that
        raise typer.Exit(EXIT_PAUSED_BY_ENGINE)


async def _stop_on_signal(runner: CampaignRunner, scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        first = True
        async for _ in signals:
            if first:
                err_console.print("stopping: finishing in-flight sends and recording outcomes "
                                  "(again to abort)")
                runner.stop()
                first = False
            else:
                scope.cancel()


async def _progress(ledger: LedgerStore, campaign_id: int, scope: trio.CancelScope) -> None:
    with scope:
        columns = (TextColumn("[bold]sending"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[detail]}"), TimeRemainingColumn())
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task("send", total=None, detail="")
            while True:
                counts = await ledger.counts(campaign_id)
                done = counts.audience - counts.unsettled
                reached = sum(counts[s] for s in ("accepted", "sent", "delivered", "read"))
                bar.update(task, total=counts.audience, completed=done,
                           detail=f"accepted {reached} failed {counts['failed']} "
                                  f"skipped {counts['skipped']} unknown {counts['unknown']}")
                await trio.sleep(0.25)


@app.command("launch")
def launch_cmd(
    name: str,
    detach: bool = typer.Option(False, "--detach", help="only mark it running; workers send it"),
    lanes: int = typer.Option(32, "--lanes", help="concurrent sender lanes"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Freeze the audience and send in the foreground with a progress bar (or --detach)."""

    async def main() -> None:
        if detach:
            async with database() as db:
                result = await camp.launch(db, name)
            if result.started_now:
                console.print(f"campaign '{name}' is running: {result.frozen_rows} recipients frozen; "
                              "`broadcaster worker` processes will send it")
            else:
                console.print(f"campaign '{name}' is already running; nothing to do")
            return
        await _send_in_foreground(name, RunOptions(dispatch=DispatchConfig(lanes=lanes)), quiet=quiet)

    run(main)


@app.command("resume")
def resume_cmd(name: str, detach: bool = typer.Option(False, "--detach"),
               quiet: bool = typer.Option(False, "--quiet"),
               force: bool = typer.Option(False, "--force", help="override a health guard's pause "
                                                                 "(optout_spike, failure_spike)")) -> None:
    """paused → running (pre-flight again); continues with exactly the unsettled recipients."""

    async def main() -> None:
        async with database(max_size=8) as db:
            if (await camp.get_campaign(db, name)).state == "recurring":
                series = await sched.resume_series(db, name)
                console.print(f"series '{name}' is active again: {series.describe()}", markup=False)
                return
            if not detach:
                settings().require("whatsapp_token")
            c = await camp.resume(db, name, force=force)
            console.print(f"campaign '{name}' is running again")
            if not detach:
                await _drive(db, c.id, RunOptions(), quiet=quiet)

    run(main)


@app.command("pause")
def pause_cmd(name: str) -> None:
    """running → paused; workers stop claiming its rows (in-flight sends finish). A recurring series
    stops firing new runs."""

    async def main() -> None:
        async with database() as db:
            if (await camp.get_campaign(db, name)).state == "recurring":
                await sched.pause_series(db, name)
                console.print(f"series '{name}' is paused: no new runs until `broadcaster campaign resume {name}` "
                              "(runs already launched go on)", markup=False)
                return
            await camp.pause(db, name)
        console.print(f"campaign '{name}' is paused")

    run(main)


@app.command("cancel")
def cancel_cmd(name: str) -> None:
    """Cancel; rows not yet sent become skipped(cancelled)."""

    async def main() -> None:
        async with database() as db:
            await camp.cancel(db, name)
        console.print(f"campaign '{name}' is cancelled")

    run(main)


@app.command("status")
def status_cmd(name: str) -> None:
    """State and recipients per ledger state."""

    async def main() -> None:
        async with database() as db:
            report = await campaign_report(db, name)
            c = await camp.get_campaign(db, name)
        state = report["state"] + (f" ({report['pause_reason']})" if report["pause_reason"] else "")
        console.print(f"campaign {report['campaign']}: {state}, audience {report['audience']}")
        if c.state == "paused":
            console.print(f"paused: {describe_pause(c.pause_reason, c.pause_detail, c.name)}", markup=False)
        table = Table("state", "recipients")
        for key in ("pending", "claimed", "unknown", "accepted", "sent", "delivered", "read",
                    "failed", "skipped"):
            table.add_row(key, str(report[key]))
        console.print(table)

    run(main)


@app.command("report")
def report_cmd(
    name: str,
    as_json: bool = typer.Option(False, "--json", help="one JSON object"),
    csv_path: str | None = typer.Option(None, "--csv", help="also write per-recipient outcomes to this CSV file"),
    mask_numbers: bool = typer.Option(False, "--mask-numbers", help="CSV: keep only the last 4 digits of numbers"),
    html_path: str | None = typer.Option(None, "--html", help="also write a self-contained HTML page with charts"),
) -> None:
    """The campaign's outcome, from the ledger: funnel, replies, failures by code with WhatsApp's
    titles, skipped by reason, delivery latency p50/p90/p99."""
    from broadcaster.commands.campaign_extra import print_report
    from broadcaster.report_export import full_report, write_csv, write_html

    async def main() -> None:
        async with database() as db:
            report = await full_report(db, name)
            for target, flag in ((csv_path, "--csv"), (html_path, "--html")):
                _check_writable(target, flag)
            rows = await write_csv(db, name, csv_path, mask_numbers=mask_numbers) if csv_path else None
        if html_path:
            await write_html(report, html_path)
        if as_json:
            typer.echo(orjson.dumps(report).decode())
        else:
            print_report(report)
        if rows is not None:
            err_console.print(f"wrote {rows:,} recipients to {csv_path}")
        if html_path:
            err_console.print(f"wrote {html_path}")

    run(main)


def _check_writable(target: str | None, flag: str) -> None:
    """A report file we cannot write is a usage error named before anything is written."""
    if target is None:
        return
    path = Path(target)
    if path.is_dir():
        raise UsageError(f"{flag} {target} is a directory: give a file path")
    if not path.parent.exists():
        raise UsageError(f"{flag} {target}: folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise UsageError(f"{flag} {target}: folder {path.parent} is not writable")


@app.command("list")
def list_cmd() -> None:
    """Every campaign with its state."""

    async def main() -> None:
        async with database() as db:
            items = await camp.list_campaigns(db)
        table = Table("name", "state", "segment", "template", "created")
        for c in items:
            table.add_row(c.name, c.state + (f" ({c.pause_reason})" if c.pause_reason else ""),
                          c.segment, c.template_name, c.created_at.strftime("%Y-%m-%d %H:%M"))
        console.print(table)

    run(main)


def worker_cmd(lanes: int = typer.Option(32, "--lanes", help="concurrent sender lanes"),
               batch_size: int = typer.Option(200, "--batch-size", help="rows per claim round trip"),
               lease: float = typer.Option(120.0, "--lease", help="seconds a claimed row is held before it "
                                                                  "counts as unknown (crash recovery)")) -> None:
    """Long-running: send for every running campaign. Run any number of them, on any hosts."""

    async def main() -> None:
        settings().require("whatsapp_token")
        async with database(max_size=8) as db:
            runner = CampaignRunner(db, settings(), RunOptions(
                dispatch=DispatchConfig(lanes=lanes, batch_size=batch_size, lease_s=lease,
                                        lease_sweep_s=min(5.0, lease / 2))))
            runner.dispatcher.stay_idle = True
            maybe_start_metrics()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on_signal, runner, nursery.cancel_scope)
                if settings().metrics_port:
                    from broadcaster.metrics import run_campaign_gauges

                    nursery.start_soon(run_campaign_gauges, db)
                if settings().slack_webhook_url:  # health alerts (template pauses, guard trips) to Slack
                    from broadcaster.health import run_alert_sender
                    from broadcaster.inbox.slack import SlackConfig

                    nursery.start_soon(run_alert_sender, db, SlackConfig(settings().slack_webhook_url))
                from broadcaster.health import run_template_recheck

                nursery.start_soon(run_template_recheck, db, settings())
                console.print(f"worker {runner.owner} started; Ctrl-C stops it cleanly")
                await runner.run()
                nursery.cancel_scope.cancel()

    run(main)
