"""Service metrics: first response time (FRT) and resolution time, per team and per agent.

Definitions (one conversation = one measurement; a contact writing again after resolution opens a
new conversation, so a reopened thread starts a new measurement):
- human FRT = first agent reply − first inbound message of the conversation; credited to the agent
  who sent that reply and to the conversation's team;
- bot FRT = first rule answer (opt-out/opt-in confirmation, FAQ link, complex-rule holding reply)
  − first inbound message; reported separately, never mixed into the human FRT;
- resolution = resolved − first inbound message; human resolutions are credited to the resolving
  agent and the team; conversations closed by a rule alone are counted under `bot`.

Stats per group: count, mean, median, p90 (nearest rank: the smallest value with at least 90% of
values at or below it), max; seconds; None when there is nothing to measure.
`summarise` is pure; `inbox_report` reads the rows from Postgres (counts come from the tables,
never from in-memory counters).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from broadcaster.db import Database
from broadcaster.errors import NotFoundError

__all__ = ["Stats", "campaign_replies", "inbox_report", "stats", "summarise"]

UNROUTED = "unrouted"


@dataclass(frozen=True)
class Stats:
    count: int
    mean_s: float | None
    median_s: float | None
    p90_s: float | None
    max_s: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def stats(values: Iterable[float]) -> Stats:
    """Count, mean, median, nearest-rank p90 and max of durations in seconds. Pure."""
    data = sorted(values)
    if not data:
        return Stats(0, None, None, None, None)
    p90 = data[max(0, math.ceil(0.9 * len(data)) - 1)]
    return Stats(len(data), statistics.fmean(data), statistics.median(data), p90, data[-1])


def _secs(later: datetime | None, earlier: datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    return max(0.0, (later - earlier).total_seconds())


def summarise(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The report from conversation rows.

    Each row: team, status, first_inbound_at, first_bot_reply_at, first_human_reply_at,
    first_human_agent, resolved_at, resolved_by ('agent' | 'bot' | None), resolved_agent.
    """
    human_frt: list[float] = []
    bot_frt: list[float] = []
    human_res: list[float] = []
    bot_res: list[float] = []
    teams: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"frt": [], "resolution": [], "bot_frt": []})
    team_counts: dict[str, dict[str, int]] = defaultdict(lambda: {"conversations": 0, "open": 0, "queued": 0})
    agents: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"frt": [], "resolution": []})
    for r in rows:
        team = r["team"] or UNROUTED
        counts = team_counts[team]
        counts["conversations"] += 1
        counts["open"] += r["status"] in ("queued", "assigned")
        counts["queued"] += r["status"] == "queued"
        frt = _secs(r["first_human_reply_at"], r["first_inbound_at"])
        if frt is not None:
            human_frt.append(frt)
            teams[team]["frt"].append(frt)
            if r["first_human_agent"]:
                agents[r["first_human_agent"]]["frt"].append(frt)
        bfrt = _secs(r["first_bot_reply_at"], r["first_inbound_at"])
        if bfrt is not None:
            bot_frt.append(bfrt)
            teams[team]["bot_frt"].append(bfrt)
        res = _secs(r["resolved_at"], r["first_inbound_at"])
        if res is not None and r["resolved_by"] == "bot":
            bot_res.append(res)
        elif res is not None:
            human_res.append(res)
            teams[team]["resolution"].append(res)
            if r["resolved_agent"]:
                agents[r["resolved_agent"]]["resolution"].append(res)
    return {
        "conversations": len(rows),
        "human": {"frt": stats(human_frt).as_dict(), "resolution": stats(human_res).as_dict()},
        "bot": {"frt": stats(bot_frt).as_dict(), "resolution": stats(bot_res).as_dict()},
        "teams": {name: {**team_counts[name], "frt": stats(teams[name]["frt"]).as_dict(),
                         "bot_frt": stats(teams[name]["bot_frt"]).as_dict(),
                         "resolution": stats(teams[name]["resolution"]).as_dict()}
                  for name in sorted(team_counts)},
        "agents": {name: {"frt": stats(v["frt"]).as_dict(), "resolution": stats(v["resolution"]).as_dict()}
                   for name, v in sorted(agents.items())},
    }


async def inbox_report(db: Database, *, since: datetime | None = None, workspace: str | None = None,
                       team: str | None = None) -> dict[str, Any]:
    """The FRT/resolution report over conversations opened since `since` (all when None)."""
    rows = await db.fetch(
        """SELECT t.name AS team, c.status, c.first_inbound_at, c.first_bot_reply_at, c.first_human_reply_at,
                  fa.name AS first_human_agent, c.resolved_at, c.resolved_by, ra.name AS resolved_agent
             FROM inbox_conversations c
             LEFT JOIN inbox_teams t ON t.id = c.team_id
             LEFT JOIN inbox_agents fa ON fa.id = c.first_human_agent_id
             LEFT JOIN inbox_agents ra ON ra.id = c.resolved_agent_id
            WHERE ($1::timestamptz IS NULL OR c.first_inbound_at >= $1)
              AND ($2::text IS NULL OR c.workspace = $2)
              AND ($3::text IS NULL OR t.name = $3)""", since, workspace, team)
    report = summarise(rows)
    report["since"] = since.isoformat() if since else None
    report["workspace"] = workspace
    return report


async def campaign_replies(db: Database, campaign: str) -> dict[str, Any]:
    """Replies to one campaign's broadcasts (inbound messages quoting a ledger wamid).

    reply_rate = distinct replying contacts / recipients the Cloud API accepted.
    """
    row = await db.fetchrow(
        """SELECT c.id,
                  (SELECT count(*) FROM ledger l WHERE l.campaign_id = c.id
                      AND l.state IN ('accepted', 'sent', 'delivered', 'read')) AS reached,
                  (SELECT count(*) FROM inbox_messages m WHERE m.campaign_id = c.id) AS replies,
                  (SELECT count(DISTINCT m.contact_id) FROM inbox_messages m WHERE m.campaign_id = c.id) AS repliers
             FROM campaigns c WHERE c.name = $1""", campaign)
    if row is None:
        raise NotFoundError(f"campaign {campaign!r} does not exist")
    reached = row["reached"]
    return {"campaign": campaign, "reached": reached, "replies": row["replies"], "repliers": row["repliers"],
            "reply_rate": (row["repliers"] / reached) if reached else None}
