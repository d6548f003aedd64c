"""`broadcaster inbound …`: the inbound companion (webhook receiver)."""

from __future__ import annotations

import trio
import typer

from broadcaster.commands.common import console, database, maybe_start_metrics, run, settings
from broadcaster.inbound import WEBHOOK_PATH, serve_inbound

app = typer.Typer(help="Receive WhatsApp webhooks: statuses settle the ledger, messages go to the inbox.",
                  no_args_is_help=True)

DB_POOL_SIZE = 8  # group-commit writers, the apply worker, rechecks, hooks


@app.callback()
def inbound() -> None:
    """Receive WhatsApp webhooks: statuses settle the ledger, messages go to the inbox."""


@app.command("serve")
def serve(
    host: str = typer.Option("127.0.0.1", "--host", envvar="BROADCASTER_INBOUND_HOST",
                             help="address to listen on (0.0.0.0 for every interface)"),
    port: int = typer.Option(8080, "--port", envvar="BROADCASTER_INBOUND_PORT", min=0, max=65535,
                             help="TCP port (0 = any free port)"),
) -> None:
    """Serve GET/POST /webhook and /healthz until Ctrl-C.

    Needs WHATSAPP_APP_SECRET (signature key) and WHATSAPP_VERIFY_TOKEN (handshake) and a migrated
    database (`broadcaster db migrate`).
    """
    run(_serve, host, port)


async def _serve(host: str, port: int) -> None:
    config = settings()
    config.require("whatsapp_app_secret", "whatsapp_verify_token")
    from broadcaster.inbox.handler import Inbox, InboxConfig, set_default_inbox
    from broadcaster.inbox.worker import run_inbox_worker

    set_default_inbox(Inbox(InboxConfig.from_env()))  # a bad rules file fails here, before serving
    maybe_start_metrics()
    async with database(max_size=DB_POOL_SIZE) as db, trio.open_nursery() as nursery:
        bound = await nursery.start(serve_inbound, db, config, host, port)
        await nursery.start(run_inbox_worker, db, config)  # rule answers and Slack escalations
        if config.slack_webhook_url:  # health alerts: template paused by WhatsApp, guard trips
            from broadcaster.health import run_alert_sender
            from broadcaster.inbox.slack import SlackConfig

            await nursery.start(run_alert_sender, db, SlackConfig(config.slack_webhook_url))
        console.print(f"inbound: receiving webhooks on http://{host}:{bound}{WEBHOOK_PATH} (Ctrl-C stops)")
