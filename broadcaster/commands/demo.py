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
DEMO_SEGMENT = "demo_entertainment_hi_ta"
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
    segment → campaign → built-in sandbox → launch with a progress bar → report."""
    from broadcaster.sandbox import SandboxConfig, SandboxThread

    template_docs = orjson.loads(templates.read_bytes())["data"]
    with SandboxThread(SandboxConfig(templates=template_docs, mps=80,
                                     phone_number_id=DEMO_NUMBER)) as sandbox:
        os.environ.setdefault("WHATSAPP_API_URL", sandbox.base_url)
        os.environ.setdefault("WHATSAPP_TOKEN", "sandbox-token")
        os.environ.setdefault("WHATSAPP_PHONE_NUMBER_ID", DEMO_NUMBER)
        console.print(f"[bold]1/7[/] sandbox (Cloud API compatible) at {sandbox.base_url}")
        run(_demo, contacts, templates)


async def _demo(contacts: Path, templates: Path) -> None:
    from broadcaster.campaign_run import RunOptions
    from broadcaster.campaigns import create_campaign
    from broadcaster.commands.campaign import _send_in_foreground
    from broadcaster.contacts import import_contacts
    from broadcaster.db import ensure_database, open_db
    from broadcaster.errors import StateError
    from broadcaster.migrate import migrate
    from broadcaster.report import campaign_report
    from broadcaster.segment_store import count_segment, create_segment
    from broadcaster.template_store import import_templates
    from segments.filters import SegmentFilter

    cfg = settings()
    await ensure_database(cfg.database_url)
    async with open_db(cfg.database_url) as db:
        applied = await migrate(db)
        console.print(f"[bold]2/7[/] database migrated ({len(applied)} new migrations)")
        summary = await import_contacts(db, contacts, workspace=None)
        console.print(f"[bold]3/7[/] contacts imported from {contacts.name}: {summary.describe()}")
        ts = await import_templates(db, templates)
        console.print(f"[bold]4/7[/] templates imported: {ts.read} ({ts.by_status})")
        seg = SegmentFilter(workspace=DEMO_WORKSPACE, genres=("entertainment",), languages=("hi", "ta"))
        try:
            await create_segment(db, DEMO_SEGMENT, seg)
        except StateError:
            pass  # kept from an earlier demo run
        size = await count_segment(db, DEMO_SEGMENT)
        console.print(f"[bold]5/7[/] segment {DEMO_SEGMENT} (entertainment × hi, ta): {size} contacts")
        name = "demo-" + datetime.now().strftime("%Y%m%d-%H%M%S")
        await create_campaign(db, name, segment=DEMO_SEGMENT, template="daily_campaign_invite",
                              variables=DEMO_VARS, default_language="hi")
        console.print(f"[bold]6/7[/] campaign {name} with template daily_campaign_invite")
    console.print("[bold]7/7[/] launching")
    await _send_in_foreground(name, RunOptions(), quiet=False)
    async with open_db(cfg.database_url) as db:
        report = await campaign_report(db, name)
    console.print_json(orjson.dumps(report).decode())
    ok = report["accepted"] + report["skipped"] + report["failed"] == report["audience"]
    console.print(f"[bold]{'done' if ok else 'incomplete'}[/]: {report['accepted']} of {report['audience']} "
                  f"accepted by the sandbox; see `broadcaster campaign report {name}`")
