"""`broadcaster db …`: schema migrations."""

from __future__ import annotations

import typer

from broadcaster.commands.common import console, database, run, settings
from broadcaster.db import ensure_database
from broadcaster.migrate import migrate

app = typer.Typer(help="Database schema.", no_args_is_help=True)


@app.command("migrate")
def migrate_cmd() -> None:
    """Create the database if needed and apply pending migrations (safe to run twice)."""

    async def main() -> None:
        created = await ensure_database(settings().database_url)
        async with database() as db:
            applied = await migrate(db)
        if created:
            console.print("created database")
        if applied:
            for mig in applied:
                console.print(f"applied {mig.version:04d}_{mig.name}")
        else:
            console.print("schema is up to date")

    run(main)


@app.command("prune")
def prune_cmd(older_than: str = typer.Option("30d", "--older-than",
                                             help="age of what is deleted: 30d, 72h, 2w (at least 7 days)")) -> None:
    """Delete processed webhook bodies, handled changes, dead letters and the status-event log older
    than --older-than (the ledger, inbox and consent history stay). Safe to run from cron daily."""
    from broadcaster.retention import parse_age, prune

    async def main() -> None:
        age = parse_age(older_than)
        async with database() as db:
            result = await prune(db, age)
        for label, n in result.deleted.items():
            console.print(f"{label}: {n:,} deleted")
        console.print(f"older than {older_than}: {result.total:,} rows deleted")

    run(main)
