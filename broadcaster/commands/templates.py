"""`broadcaster templates …`: the template registry."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from broadcaster.commands.common import console, database, run, settings
from broadcaster.template_store import import_templates, list_templates, sync_templates

app = typer.Typer(help="WhatsApp message templates (registry keyed by name + language).",
                  no_args_is_help=True)


@app.command("import")
def import_cmd(path: Path = typer.Argument(..., help="Graph `message_templates` JSON file")) -> None:
    """Upsert templates from a Graph `message_templates` JSON file."""

    async def main() -> None:
        async with database() as db:
            summary = await import_templates(db, path)
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(summary.by_status.items()))
        console.print(f"imported {summary.read} templates ({statuses})")

    run(main)


@app.command("sync")
def sync_cmd() -> None:
    """Fetch every template from the Graph API (WHATSAPP_WABA_ID), following paging, and upsert;
    campaigns paused for a template that is APPROVED again resume."""

    async def main() -> None:
        from broadcaster.health import resume_approved_templates

        async with database() as db:
            summary = await sync_templates(db, settings())
            resumed = await resume_approved_templates(db)
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(summary.by_status.items()))
        console.print(f"synced {summary.read} templates ({statuses})")
        if resumed:
            console.print(f"{resumed} campaign(s) paused for a template approved again: resumed")

    run(main)


@app.command("list")
def list_cmd() -> None:
    """Name, language, category, status and parameters of every template."""

    async def main() -> None:
        async with database() as db:
            items = await list_templates(db)
        table = Table("name", "language", "category", "status", "format", "parameters")
        for t in items:
            table.add_row(t.name, t.language, t.category, t.status, t.parameter_format,
                          ", ".join(s.label if s.required else f"{s.label} (optional)" for s in t.slots))
        console.print(table)

    run(main)
