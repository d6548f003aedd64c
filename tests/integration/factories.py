"""Factories that build test state in the real database (contacts, segments, campaigns)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from broadcaster.campaign_run import CampaignRunner, RunOptions
from broadcaster.campaigns import Campaign, create_campaign, launch
from broadcaster.config import Settings
from broadcaster.db import Database
from broadcaster.dispatch import DispatchConfig
from broadcaster.segment_store import create_segment
from broadcaster.template_store import import_templates
from segments.filters import SegmentFilter

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
INVITE_VARS = {"1": "contact.name", "2": "contact.genre_label", "3": "#MonsoonMasti", "4": "9 PM",
               "button.0": "contact.external_id"}


async def add_contacts(db: Database, workspace: str, phones: Sequence[str], *, language: str = "hi",
                       genre: str = "entertainment", opted_in: bool = True) -> None:
    """Insert contacts directly (one statement), creating the workspace."""
    await db.execute("INSERT INTO workspaces (name) VALUES ($1) ON CONFLICT DO NOTHING", workspace)
    await db.execute(
        "INSERT INTO contacts (workspace, wa_id, external_id, name, language, genre, marketing_opt_in)"
        " SELECT $1, p, 'ext_' || p, 'Creator ' || right(p, 4), $3, $4, $5 FROM unnest($2::text[]) AS p",
        workspace, list(phones), language, genre, opted_in)


async def campaign_for(db: Database, uniq: str, phones: Sequence[str], *, template: str = "daily_campaign_invite",
                       variables: dict[str, str] | None = None, language: str = "hi",
                       opted_in: bool = True) -> Campaign:
    """A draft campaign over a fresh workspace holding exactly `phones`."""
    ws = f"ws_{uniq}"
    await add_contacts(db, ws, phones, language=language, opted_in=opted_in)
    await import_templates(db, EXAMPLES / "message_templates.json")
    await create_segment(db, f"seg_{uniq}", SegmentFilter(workspace=ws))
    return await create_campaign(db, f"camp_{uniq}", segment=f"seg_{uniq}", template=template,
                                 variables=INVITE_VARS if variables is None else variables,
                                 default_language=language)


def settings_for(db_url: str, sandbox: object, **overrides: object) -> Settings:
    base = {"database_url": db_url, "whatsapp_api_url": sandbox.base_url,  # type: ignore[attr-defined]
            "whatsapp_token": "test-token", "whatsapp_phone_number_id": "106540352242922"}
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


async def run_campaign(db: Database, settings: Settings, campaign: Campaign, *,
                       dispatch: DispatchConfig | None = None, mps: float = 5000,
                       hook: Callable[[CampaignRunner], None] | None = None) -> CampaignRunner:
    """Launch (freeze) and send in this task until the campaign is no longer running."""
    await launch(db, campaign.name)
    runner = CampaignRunner(db, settings, RunOptions(dispatch=dispatch or DispatchConfig(lanes=16),
                                                     mps_override=mps, only_campaign=campaign.id))
    if hook is not None:
        hook(runner)
    await runner.run()
    return runner
