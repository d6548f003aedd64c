"""`broadcaster contacts …`: import contact lists, record opt-outs and opt-ins by hand."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from broadcaster.commands.common import console, database, err_console, run
from broadcaster.contacts import ImportSummary, import_contacts, mark_opted_in, mark_opted_out
from broadcaster.errors import InputError
from segments.phones import InvalidPhone, mask_phone, normalize_phone

app = typer.Typer(help="Contacts: import CSV / JSON Lines lists, marketing opt-out and opt-in.",
                  no_args_is_help=True)


@app.command("import")
def import_cmd(
    path: Path = typer.Argument(..., help="CSV (UTF-8, header row) or JSON Lines file"),
    workspace: str = typer.Option(None, "--workspace", "-w",
                                  help="workspace for rows that have no `workspace` value"),
    default_region: str = typer.Option("IN", "--default-region",
                                       help="region of numbers written without a country code"),
    rejects: Path = typer.Option(None, "--rejects", help="write rejected rows (row, reason, values) to this CSV"),
) -> None:
    """Import contacts: one per (workspace, number); a re-import updates; a bad file changes nothing."""

    async def main() -> None:
        async with database() as db:
            summary = await import_contacts(db, path, workspace=workspace, default_region=default_region,
                                            rejects_path=rejects)
        _print_summary(summary)
        if not summary.read:
            err_console.print(f"error: {path} has no contact rows (a header alone, or blank lines): nothing "
                              "was imported", markup=False)
            raise typer.Exit(1)
        if summary.rejected_total == summary.read:
            # nothing usable in the file: a script must notice (rows with rejections only partly is fine)
            top = next(iter(summary.rejected))
            hint = " (give --workspace)" if top == "missing_workspace" else ""
            err_console.print(f"error: every row of {path} was rejected, most as {top}{hint}; nothing was "
                              "imported", markup=False)
            raise typer.Exit(1)

    run(main)


def _print_summary(s: ImportSummary) -> None:
    table = Table("", "rows", show_header=False, box=None)
    for label, value in (("read", s.read), ("inserted", s.inserted), ("updated", s.updated),
                         ("unchanged", s.unchanged), ("collapsed duplicates", s.collapsed),
                         ("rejected", s.rejected_total)):
        table.add_row(label, str(value))
    for reason, n in s.rejected.items():
        table.add_row(f"  {reason}", str(n))
    console.print(table)
    for label, counts in (("unknown languages (kept)", s.unknown_languages),
                          ("unknown genres (kept)", s.unknown_genres),
                          ("languages without a WhatsApp template language", s.no_template_language)):
        if counts:
            shown = ", ".join(f"{k or '(blank)'} {n}" for k, n in list(counts.items())[:10])
            more = f", … {len(counts) - 10} more" if len(counts) > 10 else ""
            console.print(f"{label}: {shown}{more}", markup=False, soft_wrap=True)
    if s.without_consent:
        console.print(f"new contacts without an opted_in value: {s.without_consent} (not opted in to marketing; "
                      "UTILITY templates still reach them)", markup=False, soft_wrap=True)
    if s.new_workspaces:
        console.print(f"new workspaces: {', '.join(s.new_workspaces)}", markup=False, soft_wrap=True)
    for line in s.examples:
        console.print(f"  rejected: {line}", markup=False, soft_wrap=True)
    if s.rejects_path:
        console.print(f"rejected rows written to {s.rejects_path}", markup=False, soft_wrap=True)
    console.print(f"{s.read} rows in {s.seconds:.1f} s ({s.rows_per_s:,.0f} rows/s)")


def _wa_id(number: str, region: str) -> str:
    try:
        return normalize_phone(number, region)
    except InvalidPhone as exc:
        raise InputError(f"the NUMBER argument is not a mobile number: {exc.detail} ({exc.reason})") from None


@app.command("opt-out")
def opt_out_cmd(
    number: str = typer.Argument(..., help="the contact's phone number, any common format"),
    workspace: str = typer.Option(..., "--workspace", "-w"),
    default_region: str = typer.Option("IN", "--default-region"),
    note: str = typer.Option(None, "--note", help="why (kept with the consent change)"),
) -> None:
    """Stop MARKETING messages to a number (source `agent`); no later import can undo it."""

    async def main() -> None:
        wa_id = _wa_id(number, default_region)
        async with database() as db:
            changed = await mark_opted_out(db, workspace, wa_id, "agent", detail=note)
        console.print(f"{mask_phone(wa_id)}: {'opted out' if changed else 'was already opted out'}")

    run(main)


@app.command("opt-in")
def opt_in_cmd(
    number: str = typer.Argument(..., help="the contact's phone number, any common format"),
    workspace: str = typer.Option(..., "--workspace", "-w"),
    default_region: str = typer.Option("IN", "--default-region"),
    note: str = typer.Option(None, "--note", help="why (kept with the consent change)"),
) -> None:
    """Opt an existing contact back in to MARKETING messages (source `agent`)."""

    async def main() -> None:
        wa_id = _wa_id(number, default_region)
        async with database() as db:
            changed = await mark_opted_in(db, workspace, wa_id, "agent", detail=note)
        console.print(f"{mask_phone(wa_id)}: "
                      f"{'opted in' if changed else 'unchanged (already opted in, or no such contact)'}")

    run(main)
