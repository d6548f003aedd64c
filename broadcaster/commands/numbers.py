"""`broadcaster numbers …`: sender numbers with their messages/s ceiling and daily tier."""

from __future__ import annotations

import typer
from rich.table import Table

from broadcaster import numbers as nums
from broadcaster.commands.common import console, database, run

app = typer.Typer(help="Sender numbers (phone_number_id): rate ceiling and daily tier.", no_args_is_help=True)


@app.command("add")
def add_cmd(phone_number_id: str, workspace: str = typer.Option(..., "--workspace"),
            mps: int = typer.Option(80, "--mps", help="messages per second ceiling (1-1000)"),
            tier: str = typer.Option("unlimited", "--tier", help="unique recipients / 24 h: 250, 2k, 10k, 100k, "
                                                                 "unlimited or a number"),
            portfolio: str = typer.Option("default", "--portfolio",
                                          help="business portfolio: its numbers share one daily tier budget")) -> None:
    """Add a sender number to a workspace."""

    async def main() -> None:
        async with database() as db:
            n = await nums.add_number(db, phone_number_id, workspace=workspace, mps=mps, tier=nums.parse_tier(tier),
                                      portfolio=portfolio)
        console.print(f"number {n.phone_number_id} ({n.workspace}): {n.mps} msg/s, tier {n.tier or 'unlimited'}"
                      f" (portfolio {n.portfolio})")

    run(main)


@app.command("set")
def set_cmd(phone_number_id: str, mps: int | None = typer.Option(None, "--mps"),
            tier: str | None = typer.Option(None, "--tier"),
            portfolio: str | None = typer.Option(None, "--portfolio")) -> None:
    """Change a number's rate ceiling, tier or business portfolio."""

    async def main() -> None:
        async with database() as db:
            n = await nums.set_number(db, phone_number_id, mps=mps,
                                      tier=nums.parse_tier(tier) if tier is not None else "keep",
                                      portfolio=portfolio)
        console.print(f"number {n.phone_number_id}: {n.mps} msg/s, tier {n.tier or 'unlimited'}"
                      f" (portfolio {n.portfolio})")

    run(main)


@app.command("list")
def list_cmd() -> None:
    """Every configured sender number."""

    async def main() -> None:
        async with database() as db:
            items = await nums.list_numbers(db)
        table = Table("phone_number_id", "workspace", "msg/s", "tier (24 h)", "portfolio", "quality")
        for n in items:
            table.add_row(n.phone_number_id, n.workspace, str(n.mps), str(n.tier or "unlimited"), n.portfolio,
                          n.quality)
        console.print(table)

    run(main)
