"""`broadcaster demo` (the main job on embedded defaults) and `broadcaster sandbox`."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import orjson
import typer

from broadcaster.commands.common import console, run, settings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DEMO_WORKSPACE = "originals"
DEMO_SEGMENT = "demo_entertainment_music_humor"
DEMO_NUMBER = "106540352242922"
DEMO_VARS = {
    "1": "contact.name",
    "2": "contact.genre_label",
    "3": "#MonsoonMasti",
    "4": "9 PM",
    "button.0": "contact.external_id",
}


def sandbox_cmd(
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8088, "--port"),
    mps: int = typer.Option(80, "--mps", help="accepted sends per number per second (0 = unlimited)"),
    templates: Path | None = typer.Option(None, "--templates",
                                          help="Graph message_templates JSON to validate sends against"),
    webhook_url: str | None = typer.Option(None, "--webhook-url", help="POST signed status webhooks here"),
    app_secret: str = typer.Option("sandbox-app-secret", "--app-secret", envvar="WHATSAPP_APP_SECRET"),
) -> None:
    """Serve the built-in Cloud-API-compatible sandbox until Ctrl-C."""
    from broadcaster.sandbox import SandboxConfig, sandbox_main

    docs = None
    if templates is not None:
        docs = orjson.loads(templates.read_bytes())["data"]
    console.print(f"sandbox on http://{host}:{port}/v25.0 (mps {mps or 'unlimited'})")
    sandbox_main(SandboxConfig(host=host, port=port, mps=mps, templates=docs, webhook_url=webhook_url,
                               app_secret=app_secret))


def demo_cmd(
    contacts: Path = typer.Option(EXAMPLES / "contacts_sample.csv", "--contacts"),
    templates: Path = typer.Option(EXAMPLES / "message_templates.json", "--templates"),
) -> None:
    """The main job end to end on embedded defaults: migrate → import contacts and templates →
    segment → campaign → built-in sandbox → launch with a progress bar → delivery webhooks → report."""
    from broadcaster.sandbox import SandboxConfig, SandboxThread

    template_docs = orjson.loads(templates.read_bytes())["data"]
    # the demo always talks to its own sandbox, whatever the environment points at: demo data must
    # never reach the real Cloud API
    os.environ["WHATSAPP_APP_SECRET"] = "demo-app-secret"
    os.environ["WHATSAPP_VERIFY_TOKEN"] = "demo-verify-token"
    with SandboxThread(SandboxConfig(templates=template_docs, mps=80, phone_number_id=DEMO_NUMBER,
                                     app_secret=os.environ["WHATSAPP_APP_SECRET"], read_rate=0.6,
                                     webhook_delay_s=0.2)) as sandbox:
        os.environ["WHATSAPP_API_URL"] = sandbox.base_url
        os.environ["WHATSAPP_TOKEN"] = "sandbox-token"
        os.environ["WHATSAPP_PHONE_NUMBER_ID"] = DEMO_NUMBER
        console.print(f"[bold]1/8[/] sandbox (Cloud API compatible) at {sandbox.base_url}")
        run(_demo, contacts, templates, sandbox)


async def _demo(contacts: Path, templates: Path, sandbox: object) -> None:
    import trio

    from broadcaster.campaign_run import RunOptions
    from broadcaster.campaigns import create_campaign
    from broadcaster.commands.campaign import _send_in_foreground
    from broadcaster.contacts import import_contacts
    from broadcaster.db import ensure_database, open_db
    from broadcaster.errors import BroadcasterError
    from broadcaster.inbound import WEBHOOK_PATH, serve_inbound
    from broadcaster.migrate import migrate
    from broadcaster.report import campaign_report
    from broadcaster.segment_store import count_segment, create_segment, update_segment
    from broadcaster.template_store import import_templates
    from segments.filters import SegmentFilter

    cfg = settings()
    await ensure_database(cfg.database_url)
    async with open_db(cfg.database_url, max_size=10) as db, trio.open_nursery() as nursery:
        applied = await migrate(db)
        console.print(f"[bold]2/8[/] database migrated ({len(applied)} new migrations)")
        summary = await import_contacts(db, contacts, workspace=None)
        console.print(f"[bold]3/8[/] contacts imported from {contacts.name}: {summary.describe()}")
        ts = await import_templates(db, templates)
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(ts.by_status.items()))
        console.print(f"[bold]4/8[/] templates imported: {ts.read} ({statuses})")
        seg = SegmentFilter(workspace=DEMO_WORKSPACE, genres=("entertainment", "comedy", "music"),
                            languages=("hi", "ta", "te", "bn", "en"), opted_in=True)
        try:
            await create_segment(db, DEMO_SEGMENT, seg)
        except BroadcasterError:  # made by an earlier demo run: bring its filter up to date
            await update_segment(db, DEMO_SEGMENT, seg)
        size = await count_segment(db, DEMO_SEGMENT)
        console.print(f"[bold]5/8[/] segment {DEMO_SEGMENT} ({seg.describe()}): {size} contacts")
        name = "demo-" + datetime.now().strftime("%Y%m%d-%H%M%S")
        # from the sandbox's own number, whatever numbers the workspace has registered
        await create_campaign(db, name, segment=DEMO_SEGMENT, template="daily_campaign_invite",
                              variables=DEMO_VARS, default_language="hi", phone_number_id=DEMO_NUMBER)
        console.print(f"[bold]6/8[/] campaign {name} with template daily_campaign_invite")
        port = await nursery.start(serve_inbound, db, cfg, "127.0.0.1", 0)
        hook = f"http://127.0.0.1:{port}{WEBHOOK_PATH}"
        await trio.to_thread.run_sync(lambda: sandbox.configure(webhook_url=hook))  # type: ignore[attr-defined]
        console.print(f"[bold]7/8[/] inbound receiver at {hook} (signed status webhooks from the sandbox)")
        console.print("[bold]8/8[/] launching")
        await _send_in_foreground(name, RunOptions(), quiet=False)
        with trio.move_on_after(15):  # let the delivery webhooks settle the ledger
            # polls rows another task (the inbound receiver) writes; there is no event to wait on
            while (await campaign_report(db, name))["accepted"] > 0:  # noqa: ASYNC110
                await trio.sleep(0.2)
        report = await campaign_report(db, name)
        nursery.cancel_scope.cancel()
    console.print_json(orjson.dumps(report).decode())
    reached = report["audience"] - report["skipped"] - report["failed"] - report["unknown"] - report["pending"]
    skipped = ", ".join(f"{n} {reason}" for reason, n in report["skipped_by_reason"].items())
    if "frequency_cap" in report["skipped_by_reason"]:
        skipped += " — the marketing cap (2 per 24 h) of a re-run"
    console.print(f"[bold]done[/]: {reached} of {report['audience']} recipients accepted by the sandbox "
                  f"({report['delivered'] + report['read']} delivered, {report['read']} of them read"
                  f"{f'; skipped {skipped}' if skipped else ''}); see `broadcaster campaign report {name}`")
