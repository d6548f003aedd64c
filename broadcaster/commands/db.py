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
