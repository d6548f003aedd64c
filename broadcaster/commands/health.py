"""`broadcaster health …`: guard thresholds per workspace, and what quality did to each number."""

from __future__ import annotations

import typer
from rich.table import Table

from broadcaster import health
from broadcaster.commands.common import console, database, run
from broadcaster.errors import UsageError

app = typer.Typer(help="Messaging health: guards that pause a campaign, number quality and rate.",
                  no_args_is_help=True)
_KEEP = object()  # "option not given"
guards_app = typer.Typer(help="Opt-out and failure-spike guards, per workspace.", no_args_is_help=True)
app.add_typer(guards_app, name="guards")


def _share(option: str, value: str | None) -> float | None | object:
    """'0.02' → 0.02, '2%' → 0.02, 'off' → None (guard off), None → keep."""
    if value is None:
        return _KEEP
    text = value.strip().lower()
    if text in ("off", "none", "0"):
        return None
    try:
        share = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise UsageError(f"{option} {value!r}: expected a share such as 0.02 or 2%, or 'off'") from None
    return share


def _print(workspace: str, config: health.GuardConfig, own: bool) -> None:
    source = "" if own else " (defaults)"
    table = Table("guard", "trips when", "over", "min sample", title=f"guards of {workspace}{source}")

    def when(share: float | None, what: str) -> str:
        return "off" if share is None else f"{what} > {share * 100:g} % of sends"

    window = f"{config.window_s / 60:g} min"
    table.add_row("optout_spike", when(config.optout_share, "STOP replies + 131050"), window, str(config.min_sample))
    table.add_row("failure_spike", when(config.failure_share, "failed sends"), window, str(config.min_sample))
    console.print(table)


@guards_app.command("show")
def show_cmd(workspace: str = typer.Option(..., "--workspace", "-w")) -> None:
    """The workspace's guard thresholds (the defaults until `guards set`)."""

    async def main() -> None:
        async with database() as db:
            config, own = await health.get_guards(db, workspace)
        _print(workspace, config, own)

    run(main)


@guards_app.command("set")
def set_cmd(
    workspace: str = typer.Option(..., "--workspace", "-w"),
    optout_share: str | None = typer.Option(None, "--optout-share", help="e.g. 0.02 or 2%; 'off' disables"),
    failure_share: str | None = typer.Option(None, "--failure-share", help="e.g. 0.2 or 20%; 'off' disables"),
    window_min: float | None = typer.Option(None, "--window-min", help="minutes the shares are measured over"),
    min_sample: int | None = typer.Option(None, "--min-sample", help="sends in the window before a guard may trip"),
) -> None:
    """Change some guard thresholds of a workspace; the others keep their value."""

    async def main() -> None:
        changes: dict[str, object] = {}
        for key, option, raw in (("optout_share", "--optout-share", optout_share),
                                 ("failure_share", "--failure-share", failure_share)):
            value = _share(option, raw)
            if value is not _KEEP:
                changes[key] = value
        if window_min is not None:
            if not 1 / 6 <= window_min <= 24 * 60:  # also refuses nan and inf
                raise UsageError(f"--window-min {window_min:g}: the window must be 0.17 to 1440 minutes "
                                 "(10 s to 24 h)")
            changes["window_s"] = round(window_min * 60)
        if min_sample is not None:
            changes["min_sample"] = min_sample
        if not changes:
            raise UsageError("nothing to change: give --optout-share, --failure-share, --window-min or --min-sample")
        async with database() as db:
            config = await health.set_guards(db, workspace, **changes)
        _print(workspace, config, True)

    run(main)


@app.command("numbers")
def numbers_cmd() -> None:
    """Each sender number's quality, the rate it sends at now and its configured ceiling."""

    async def main() -> None:
        async with database() as db:
            items = await health.list_numbers_health(db)
        table = Table("phone_number_id", "workspace", "display", "quality", "msg/s now", "ceiling", "tier (24 h)")
        for n in items:
            table.add_row(n.phone_number_id, n.workspace, n.display_phone_number or "-", n.quality, str(n.mps),
                          str(n.mps_ceiling), str(n.tier or "unlimited"))
        console.print(table)

    run(main)


@app.command("number")
def number_cmd(phone_number_id: str,
               display: str = typer.Option(..., "--display", help="the number's digits as WhatsApp shows them "
                                                                  "(quality webhooks name it so)")) -> None:
    """Record a number's display number, so quality webhooks find it."""

    async def main() -> None:
        async with database() as db:
            await health.set_display_number(db, phone_number_id, display)
        console.print(f"number {phone_number_id}: display number recorded")

    run(main)
