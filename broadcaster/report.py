"""Campaign reports, derived from the per-recipient ledger only (never from in-memory counters).

The outcome counts (pending, claimed, unknown, accepted, sent, delivered, read, failed, skipped)
partition the audience: they always add up to `audience`.
"""

from __future__ import annotations

from typing import Any

from broadcaster.campaigns import get_campaign
from broadcaster.db import Database
from broadcaster.ledger import ALL_STATES, LedgerStore
from broadcaster.sql import QUERIES


async def campaign_report(db: Database, name: str) -> dict[str, Any]:
    """One JSON-ready object: campaign, state, audience, a count per ledger state, failures by
    code, skipped by reason, and how `unknown` outcomes were settled."""
    campaign = await get_campaign(db, name)
    counts = await LedgerStore(db).counts(campaign.id)
    failures = await db.fetch(QUERIES["failures_by_code"], campaign.id)
    skipped = await db.fetch(QUERIES["skipped_by_reason"], campaign.id)
    resolutions = await db.fetch(
        "SELECT unknown_resolution, count(*)::bigint AS n FROM ledger"
        " WHERE campaign_id = $1 AND unknown_resolution IS NOT NULL GROUP BY 1", campaign.id)
    report: dict[str, Any] = {
        "campaign": campaign.name,
        "state": campaign.state,
        "pause_reason": campaign.pause_reason,
        "template": campaign.template_name,
        "segment": campaign.segment,
        "audience": counts.audience,
    }
    for state in ALL_STATES:
        report[state] = counts[state]
    report["failures_by_code"] = {str(r["error_code"]): r["n"] for r in failures}
    report["failure_titles"] = {str(r["error_code"]): r["title"] for r in failures}
    report["skipped_by_reason"] = {str(r["skip_reason"]): r["n"] for r in skipped}
    report["unknown_settled"] = {str(r["unknown_resolution"]): r["n"] for r in resolutions}
    return report
