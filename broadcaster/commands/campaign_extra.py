"""More `broadcaster campaign …` commands: plan, watch, retry-failed, and `list` with progress and
schedule. Registered on `broadcaster.commands.campaign.app` when this module is imported.

Also what other commands reuse: `print_plan` / `confirm_plan` (launch shows the plan first),
`watch_live` (the live view), `print_report` (the report's funnel in the terminal).
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import orjson
import trio
import typer
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from broadcaster import campaigns as camp
from broadcaster import schedule as sched
from broadcaster.campaign_run import RunOptions
from broadcaster.commands.campaign import _drive, app
from broadcaster.commands.common import console, database, run, settings
from broadcaster.db import Database
from broadcaster.errors import UsageError
from broadcaster.plan import SendPlan, send_plan
from broadcaster.report_export import LiveSnapshot, live_snapshot

__all__ = ["confirm_plan", "print_plan", "print_report", "render_snapshot", "watch_live"]

WATCH_REFRESH_S = 1.0  # the live view re-reads the ledger this often


# ----- plan

def _hm(value: datetime | None, tz: ZoneInfo, now: datetime) -> str:
    if value is None:
        return "never (raise the tier)"
    local = value.astimezone(tz)
    same_day = local.date() == now.astimezone(tz).date()
    return local.strftime("%H:%M %Z" if same_day else "%d %b %H:%M %Z")


def _duration(seconds: float) -> str:
    if seconds < 1:
        return "under 1 s"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def print_plan(plan: SendPlan, *, out: Console = console, now: datetime | None = None) -> None:
    """The plan in the terminal: audience, variants, pre-flight, estimate (times in the workspace zone;
    a date is shown when it is not today)."""
    tz = ZoneInfo(plan.timezone)
    now = now or sched.utc_now()
    source = "from its ledger" if plan.frozen else "if launched now"
    out.print(f"[bold]plan for {plan.campaign}[/] ({plan.state}) — template {plan.template}"
              f"{f' ({plan.category})' if plan.category else ''}, segment {plan.segment}")
    skipped = sum(plan.skipped.values())
    reasons = ", ".join(f"{r} {n:,}" for r, n in sorted(plan.skipped.items(), key=lambda kv: -kv[1]))
    done = sum(plan.settled.values())
    out.print(f"audience {plan.audience:,} {source}: [bold]{plan.to_send:,} to send[/]"
              + (f", {done:,} already settled" if done else "")
              + (f", {skipped:,} skipped ({reasons})" if skipped else ""))
    if plan.by_language:
        table = Table("template variant", "recipients", "share")
        for lang, n in plan.by_language.items():
            table.add_row(f"{plan.template} / {lang}", f"{n:,}", f"{n / plan.to_send:.0%}" if plan.to_send else "")
        out.print(table)
    if plan.state in ("completed", "cancelled"):
        out.print(f"pre-flight: not needed ({plan.state})")
    elif plan.preflight_ok:
        out.print("pre-flight: [green]ok[/]" + "".join(f"\n  warning: {w}" for w in plan.warnings))
    else:
        out.print("pre-flight: [red]FAILED[/]" + "".join(f"\n  - {p}" for p in plan.problems))
    tier = "unlimited tier" if plan.tier is None else (
        f"tier {plan.tier:,}/24 h: {plan.tier_reached:,} reached, {plan.tier_remaining or 0:,} left")
    out.print(f"number {plan.number or '(none)'} at {plan.mps:g}/s, {tier}")
    eta = plan.eta
    if plan.to_send == 0:
        out.print("estimate: nothing to send")
    elif eta.budget_stops_after is None:
        out.print(f"estimate: starts {_hm(eta.start_at, tz, now)}, finishes at [bold]{_hm(eta.finish_at, tz, now)}"
                  f"[/] ({_duration(eta.send_s)} at {plan.mps:g}/s)")
    else:
        out.print(f"estimate: the tier budget runs out after [bold]{eta.budget_stops_after:,}[/] recipients "
                  f"(at {_hm(eta.pause_at, tz, now)}); it would continue at [bold]{_hm(eta.continue_at, tz, now)}"
                  f"[/] and finish at {_hm(eta.finish_at, tz, now)} (the engine pauses it as tier_exhausted; "
                  f"resume it then)")


async def confirm_plan(db: Database, name: str, *, yes: bool) -> bool:
    """Show the plan; True to go on. Refuses (False) when pre-flight failed; asks unless `yes`."""
    plan = await send_plan(db, name, default_number=settings().whatsapp_phone_number_id, now=sched.utc_now())
    print_plan(plan)
    if not plan.preflight_ok:
        return False
    if yes:
        return True
    return await trio.to_thread.run_sync(lambda: typer.confirm("launch now?", default=False))


@app.command("plan")
def plan_cmd(name: str, as_json: bool = typer.Option(False, "--json", help="one JSON object")) -> None:
    """What launching would do: audience after suppression and caps per language, pre-flight, ETA.
    Exits 1 when pre-flight failed (launch would refuse)."""

    async def main() -> None:
        async with database() as db:
            plan = await send_plan(db, name, default_number=settings().whatsapp_phone_number_id,
                                   now=sched.utc_now())
        if as_json:
            typer.echo(orjson.dumps(plan.to_dict()).decode())
        else:
            print_plan(plan)
        if not plan.preflight_ok:
            raise typer.Exit(1)  # launching would be refused: say so to scripts too

    run(main)


# ----- watch

def render_snapshot(s: LiveSnapshot) -> RenderableType:
    """The live view: progress bar with ETA, rate now, counts per outcome, top error codes."""
    state = s.state + (f" ({s.pause_reason})" if s.pause_reason else "")
    pct = s.settled / s.audience if s.audience else 0.0
    eta = s.eta_s
    head = Table.grid(padding=(0, 1))
    head.add_row(Text(s.campaign, style="bold"), Text(state),
                 ProgressBar(total=max(1, s.audience), completed=s.settled, width=36),
                 Text(f"{s.settled:,}/{s.audience:,} {pct:.0%}"),
                 Text("ETA " + ("–" if eta is None else _duration(eta)), style="cyan"),
                 Text(f"rate now {s.rate_now:.1f}/s"))
    counts = Table.grid(padding=(0, 2))
    counts.add_row(*(Text.assemble(f"{k} ", (f"{s.by_state.get(k, 0):,}", "bold"))
                     for k in ("accepted", "sent", "delivered", "read", "failed", "unknown", "pending", "skipped")))
    parts: list[RenderableType] = [head, counts]
    if s.top_errors:
        parts.append(Text("top errors: " + " · ".join(f"{code} {title} ×{n:,}" for code, title, n in s.top_errors),
                          style="red"))
    return Group(*parts)


async def watch_live(db: Database, campaign_id: int, *, out: Console = console, refresh_s: float = WATCH_REFRESH_S,
                     until_done: bool = True) -> LiveSnapshot:
    """Show the live view until the campaign stops running (completed, paused, cancelled), or
    forever when `until_done` is False (cancel it). Returns the last snapshot."""
    snap = await live_snapshot(db, campaign_id)
    with Live(render_snapshot(snap), console=out, auto_refresh=False, transient=False) as live:
        while True:
            if until_done and snap.state not in ("running", "scheduled"):
                break
            await trio.sleep(refresh_s)
            snap = await live_snapshot(db, campaign_id)
            live.update(render_snapshot(snap), refresh=True)
    return snap


@app.command("watch")
def watch_cmd(name: str, once: bool = typer.Option(False, "--once", help="print one snapshot and exit"),
              interval: float = typer.Option(WATCH_REFRESH_S, "--interval", help="refresh every N seconds")) -> None:
    """Live view of a campaign: progress with ETA, rate now, outcomes so far, top error codes."""

    async def main() -> None:
        async with database() as db:
            c = await camp.get_campaign(db, name)
            if once:
                console.print(render_snapshot(await live_snapshot(db, c.id)))
                return
            last = await watch_live(db, c.id, refresh_s=max(0.2, interval))
        if not console.is_terminal:  # a piped live view may end mid-line
            console.line()
        console.print(f"campaign '{name}' is {last.state}" + (f" ({last.pause_reason})" if last.pause_reason else ""))

    run(main)


# ----- retry-failed

def _codes(value: str) -> list[int]:
    codes = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit():
            raise UsageError(f"--codes {value!r}: {part!r} is not an error code; e.g. --codes 131000,131049")
        codes.append(int(part))
    return codes


@app.command("retry-failed")
def retry_failed_cmd(
    name: str,
    codes: str = typer.Option(..., "--codes", help="comma-separated WhatsApp error codes, e.g. 131000,131049"),
    new_name: str | None = typer.Option(None, "--name", help="name of the follow-up (default NAME-retry-N)"),
    send: bool = typer.Option(False, "--send", help="send it now in the foreground (else it waits, paused)"),
) -> None:
    """Create a follow-up campaign for exactly the recipients that failed with these codes (those an
    earlier retry of NAME already holds are left out)."""

    async def main() -> None:
        if new_name is not None:
            camp.check_new_campaign(new_name, unknown_grace_s=0)
        async with database(max_size=8) as db:
            retry = await sched.create_retry(db, name, _codes(codes), new_name=new_name)
            skipped = ", ".join(f"{r} {n}" for r, n in retry.skipped.items())
            console.print(f"created '{retry.campaign.name}' for {retry.to_send:,} recipients of '{name}'"
                          + (f" ({skipped} not retried)" if skipped else ""))
            if not send:
                console.print(f"it is paused (retry_ready): `broadcaster campaign resume {retry.campaign.name}` "
                              "sends it")
                return
            c = await camp.resume(db, retry.campaign.name)
            await _drive(db, c.id, RunOptions(), quiet=False)

    run(main)


# ----- list, with progress and schedule (replaces the plain one)

app.registered_commands[:] = [c for c in app.registered_commands if c.name != "list"]


@app.command("list")
def list_cmd() -> None:
    """Every campaign: state, progress from the ledger, schedule (next run, or which series it belongs to)."""

    async def main() -> None:
        async with database() as db:
            rows = await sched.overview(db)
        table = Table("name", "state", "progress", "schedule", "segment", "template", "created")
        for r in rows:
            progress = f"{r.settled:,}/{r.audience:,} {r.settled / r.audience:.0%}" if r.audience else "–"
            table.add_row(r.name, r.state + (f" ({r.pause_reason})" if r.pause_reason else ""), progress,
                          r.schedule or "", r.segment, r.template, r.created_at.strftime("%Y-%m-%d %H:%M"))
        console.print(table)

    run(main)


# ----- report (used by `campaign report`)

def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.2f} s" if value < 60 else _duration(value)


def print_report(report: dict, *, out: Console = console) -> None:
    """The report's funnel, failures with WhatsApp titles, skipped reasons and delivery latency."""
    f = report["funnel"]
    audience = f["audience"]
    state = report["state"] + (f" ({report['pause_reason']})" if report.get("pause_reason") else "")
    out.print(f"[bold]campaign {report['campaign']}[/] ({state}), template {report['template']}, "
              f"segment {report['segment']}")
    funnel = Table("stage", "recipients", "of audience")
    for stage in ("audience", "skipped", "accepted", "sent", "delivered", "read", "replied", "failed"):
        value = f.get(stage)
        shown = "–" if value is None else f"{value:,}"
        share = "" if value is None or not audience or stage == "audience" else f"{value / audience:.1%}"
        funnel.add_row(stage, shown, share)
    out.print(funnel)
    left = sum(report[s] for s in ("pending", "claimed", "unknown"))
    if left:
        out.print(f"still in progress: pending {report['pending']:,}, claimed {report['claimed']:,}, "
                  f"unknown {report['unknown']:,}")
    if report["skipped_by_reason"]:
        st = Table("skipped because", "recipients")
        for reason, n in report["skipped_by_reason"].items():
            st.add_row(reason, f"{n:,}")
        out.print(st)
    if report["failures"]:
        ft = Table("error code", "WhatsApp title", "recipients")
        for item in report["failures"]:
            ft.add_row(str(item["code"]) if item["code"] is not None else "—", item["title"], f"{item['n']:,}")
        out.print(ft)
    lat = report["latency_s"]
    if lat["n"]:
        out.print(f"delivery latency over {lat['n']:,} delivered: p50 {_seconds(lat['p50'])}, "
                  f"p90 {_seconds(lat['p90'])}, p99 {_seconds(lat['p99'])}")
