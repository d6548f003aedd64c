"""`broadcaster`: the command line. Thin: parses, calls one engine function, prints.

Command groups live in broadcaster/commands/ (one module each) and are joined here.
"""

from __future__ import annotations

import typer

from broadcaster.commands import (
    campaign,
    campaign_extra,  # noqa: F401  (registers plan/watch/retry-failed on `campaign`)
    contacts,
    db,
    demo,
    health,
    inbound,
    inbox,
    numbers,
    scheduler,
    segments,
    templates,
)
from broadcaster.commands.common import setup_logging

app = typer.Typer(
    name="broadcaster",
    help="WhatsApp broadcast dispatch engine. Settings come from the environment "
         "(DATABASE_URL, WHATSAPP_API_URL, WHATSAPP_TOKEN, WHATSAPP_PHONE_NUMBER_ID, …).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="log what happens")) -> None:
    """WhatsApp broadcast dispatch engine."""
    setup_logging(verbose)


app.add_typer(db.app, name="db")
app.add_typer(contacts.app, name="contacts")
app.add_typer(segments.app, name="segments")
app.add_typer(templates.app, name="templates")
app.add_typer(campaign.app, name="campaign")
app.add_typer(numbers.app, name="numbers")
app.add_typer(scheduler.app, name="scheduler")
app.add_typer(inbound.app, name="inbound")
app.add_typer(inbox.inbox_app, name="inbox")
app.add_typer(inbox.agents_app, name="agents")
app.add_typer(inbox.teams_app, name="teams")
app.add_typer(health.app, name="health")
app.command("worker")(campaign.worker_cmd)
app.command("sandbox")(demo.sandbox_cmd)
app.command("demo")(demo.demo_cmd)

if __name__ == "__main__":
    app()
