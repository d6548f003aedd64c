"""`broadcaster inbox|agents|teams …`: the inbound companion's human side.

Three typer apps, joined in cli.py as `inbox`, `agents` and `teams`. Thin: parse, call one
`broadcaster.inbox` function, print.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import typer
from rich.table import Table

from broadcaster.commands.common import console, database, err_console, run, settings
from broadcaster.errors import UsageError
from broadcaster.inbox import conversations as conv
from broadcaster.inbox import directory
from broadcaster.inbox.handler import ENV_RULES, InboxConfig
from broadcaster.inbox.reply import CloudApiSender, send_agent_reply
from broadcaster.inbox.report import campaign_replies, inbox_report
from broadcaster.inbox.rules import Incoming, RulesError, evaluate, load_rules
from broadcaster.logs import mask_phone
from segments.canon import canonical_language

__all__ = ["agents_app", "inbox_app", "parse_since", "teams_app"]

inbox_app = typer.Typer(help="Inbound conversations: test rules, list, reply, resolve, escalate, report.",
                        no_args_is_help=True)
agents_app = typer.Typer(help="Inbox agents: add, list, set online/offline and open-conversation cap.",
                         no_args_is_help=True)
teams_app = typer.Typer(help="Inbox teams: add with genre:language routes, join/leave, strategy, list.",
                        no_args_is_help=True)

_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """'7d' / '24h' / '30m' (ago) or an ISO date/datetime (UTC when no offset) → an aware datetime."""
    now = now or datetime.now(UTC)
    m = _DURATION.match(text.strip().lower())
    if m:
        return now - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"--since {text!r}: give a duration like 7d, 24h, 30m or a date like 2026-12-01") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _fmt_s(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.0f}s"
    if value < 7200:
        return f"{value / 60:.1f}m"
    return f"{value / 3600:.1f}h"


def _print_json(obj: object) -> None:
    typer.echo(orjson.dumps(obj, option=orjson.OPT_INDENT_2, default=str).decode())


# --------------------------------------------------------------------------- inbox


@inbox_app.command("test-rule")
def test_rule_cmd(
    text: str = typer.Argument(..., help="the message text as a creator would send it"),
    language: str | None = typer.Option(None, "--language", "-l", help="the contact's language (hi, ta, …)"),
    payload: str | None = typer.Option(None, "--payload", help="treat it as a template button tap with this payload"),
    rules: Path | None = typer.Option(None, "--rules", envvar=ENV_RULES,
                                      help="rules file (default: $BROADCASTER_INBOX_RULES or ./rules.toml)"),
    as_json: bool = typer.Option(False, "--json", help="print the decision as JSON"),
) -> None:
    """Show which rule a message would hit and what would happen. Sends nothing, writes nothing."""
    path = rules or InboxConfig.from_env().rules_path
    if path is None:
        raise typer.BadParameter("no rules file: pass --rules or set BROADCASTER_INBOX_RULES", param_hint="--rules")
    try:
        ruleset = load_rules(path)
    except RulesError as exc:
        err_console.print(f"error: {exc}", markup=False)
        raise typer.Exit(exc.exit_code) from None
    incoming = Incoming("button" if payload is not None else "text", text, payload,
                        canonical_language(language)[0])
    decision = evaluate(ruleset, incoming)
    if as_json:
        _print_json({"rules_version": ruleset.version, "action": decision.action, "rule": decision.rule_id,
                     "reason": decision.reason, "reply": decision.reply, "link": decision.link,
                     "topic": decision.topic})
        return
    console.print(f"rules {path} (version {ruleset.version})", markup=False)
    console.print(f"action: {decision.action}", markup=False)
    console.print(f"rule:   {decision.rule_id or '(none)'}: {decision.reason}", markup=False)
    if decision.reply:
        console.print(f"reply:  {decision.reply}", markup=False)


@inbox_app.command("list")
def list_cmd(
    workspace: str | None = typer.Option(None, "--workspace"),
    status: str | None = typer.Option("open", "--status", help="open | queued | assigned | resolved | bot | all"),
    team: str | None = typer.Option(None, "--team"),
    limit: int = typer.Option(50, "--limit", min=1, max=10_000),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Recent conversations, newest first (phone numbers masked)."""

    async def main() -> None:
        async with database() as db:
            rows = await conv.list_conversations(db, workspace=workspace, status=None if status == "all" else status,
                                                 team=team, limit=limit)
        for r in rows:
            r["wa_id"] = mask_phone(r["wa_id"])
        if as_json:
            _print_json(rows)
            return
        table = Table("id", "status", "workspace", "team", "agent", "contact", "genre", "lang", "last message",
                      "escalation")
        for r in rows:
            table.add_row(str(r["id"]), r["status"], r["workspace"], r["team"] or "-", r["agent"] or "-",
                          f"{r['contact'] or ''} {r['wa_id']}".strip(), r["genre"] or "-", r["language"] or "-",
                          f"{r['last_inbound_at']:%Y-%m-%d %H:%M}", r["escalation"] or "-")
        console.print(table)

    run(main)


@inbox_app.command("reply")
def reply_cmd(
    conversation: int = typer.Argument(..., help="conversation id (see `broadcaster inbox list`)"),
    text: str = typer.Argument(..., help="the reply text (free-form: only inside the 24 h window)"),
    agent: str | None = typer.Option(None, "--agent", envvar="BROADCASTER_AGENT",
                                     help="your agent name (default: the assigned agent)"),
) -> None:
    """Send a free-form reply. Outside the 24 h window it is refused: send a template instead."""

    async def main() -> None:
        config = settings()
        async with database() as db, CloudApiSender.from_settings(config) as sender:
            sent = await send_agent_reply(db, sender, conversation, text, agent=agent,
                                          default_phone_number_id=config.whatsapp_phone_number_id)
        first = " (first response)" if sent.first_response else ""
        console.print(f"sent to conversation {conversation}{first}: {sent.wamid}", markup=False)

    run(main)


@inbox_app.command("resolve")
def resolve_cmd(
    conversation: int = typer.Argument(..., help="conversation id"),
    agent: str | None = typer.Option(None, "--agent", envvar="BROADCASTER_AGENT", help="who resolved it"),
) -> None:
    """Close a conversation; the agent's freed slot takes the oldest queued conversation."""

    async def main() -> None:
        async with database() as db:
            result = await conv.resolve_conversation(db, conversation, agent=agent)
        console.print(f"conversation {conversation} resolved after {_fmt_s(result.resolution_s)}", markup=False)
        for conv_id, agent_id in result.reassigned:
            console.print(f"  conversation {conv_id} assigned to agent #{agent_id} from the queue", markup=False)

    run(main)


@inbox_app.command("escalate")
def escalate_cmd(
    conversation: int = typer.Argument(..., help="conversation id"),
    note: str | None = typer.Option(None, "--note", help="why (shown in Slack)"),
    agent: str | None = typer.Option(None, "--agent", envvar="BROADCASTER_AGENT"),
) -> None:
    """Post the conversation to Slack (once per conversation; the inbox worker sends it)."""

    async def main() -> None:
        async with database() as db:
            queued = await conv.escalate_conversation(db, conversation, note=note, agent=agent)
        console.print(f"conversation {conversation}: " + ("escalation queued for Slack" if queued
                                                           else "already escalated, nothing new posted"), markup=False)

    run(main)


@inbox_app.command("assign")
def assign_cmd(conversation: int = typer.Argument(...), agent: str = typer.Argument(...)) -> None:
    """Hand a conversation to an agent (a manual choice: the cap is not applied)."""

    async def main() -> None:
        async with database() as db:
            await conv.assign_conversation(db, conversation, agent)
        console.print(f"conversation {conversation} assigned to {agent}", markup=False)

    run(main)


@inbox_app.command("report")
def report_cmd(
    since: str | None = typer.Option(None, "--since", help="7d, 24h, 30m or a date (conversations opened since)"),
    workspace: str | None = typer.Option(None, "--workspace"),
    team: str | None = typer.Option(None, "--team"),
    campaign: str | None = typer.Option(None, "--campaign", help="also show replies to this campaign"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """First response time and resolution time per team and agent (human and bot apart)."""

    async def main() -> None:
        start = parse_since(since) if since else None
        async with database() as db:
            report = await inbox_report(db, since=start, workspace=workspace, team=team)
            if campaign:
                report["campaign"] = await campaign_replies(db, campaign)
        if as_json:
            _print_json(report)
            return
        human, bot = report["human"], report["bot"]
        console.print(f"{report['conversations']} conversations; human FRT median {_fmt_s(human['frt']['median_s'])}"
                      f" (p90 {_fmt_s(human['frt']['p90_s'])}), resolution median "
                      f"{_fmt_s(human['resolution']['median_s'])}; bot answers {bot['frt']['count']} "
                      f"(median {_fmt_s(bot['frt']['median_s'])})", markup=False)
        for title, groups in (("team", report["teams"]), ("agent", report["agents"])):
            table = Table(title, "FRT n", "FRT median", "FRT p90", "resolved", "resolution median",
                          "resolution p90", title=f"per {title}")
            for name, g in groups.items():
                table.add_row(name, str(g["frt"]["count"]), _fmt_s(g["frt"]["median_s"]), _fmt_s(g["frt"]["p90_s"]),
                              str(g["resolution"]["count"]), _fmt_s(g["resolution"]["median_s"]),
                              _fmt_s(g["resolution"]["p90_s"]))
            console.print(table)
        if campaign:
            c = report["campaign"]
            rate = "-" if c["reply_rate"] is None else f"{c['reply_rate']:.1%}"
            console.print(f"campaign {campaign}: {c['repliers']} of {c['reached']} replied ({rate}), "
                          f"{c['replies']} replies", markup=False)

    run(main)


# --------------------------------------------------------------------------- agents


@agents_app.command("add")
def agents_add_cmd(
    name: str = typer.Argument(...),
    workspace: str = typer.Option(..., "--workspace"),
    cap: int = typer.Option(5, "--cap", min=0, help="open conversations at most"),
    offline: bool = typer.Option(False, "--offline", help="start offline"),
) -> None:
    """Add an agent to a workspace."""

    async def main() -> None:
        async with database() as db:
            await directory.add_agent(db, workspace, name, max_open=cap, online=not offline)
        console.print(f"agent {name} added to {workspace} (cap {cap}, {'offline' if offline else 'online'})",
                      markup=False)

    run(main)


@agents_app.command("set")
def agents_set_cmd(
    name: str = typer.Argument(...),
    workspace: str = typer.Option(..., "--workspace"),
    online: bool | None = typer.Option(None, "--online/--offline"),
    cap: int | None = typer.Option(None, "--cap", min=0),
) -> None:
    """Set an agent online/offline or change its cap (queued conversations may be assigned at once)."""

    async def main() -> None:
        async with database() as db:
            assigned = await directory.set_agent(db, workspace, name, online=online, max_open=cap)
        console.print(f"agent {name} updated; {len(assigned)} queued conversations assigned", markup=False)

    run(main)


@agents_app.command("list")
def agents_list_cmd(workspace: str | None = typer.Option(None, "--workspace"),
                    as_json: bool = typer.Option(False, "--json")) -> None:
    """Agents with their open conversations, cap and teams."""

    async def main() -> None:
        async with database() as db:
            rows = await directory.list_agents(db, workspace)
        if as_json:
            _print_json(rows)
            return
        table = Table("workspace", "agent", "online", "open / cap", "teams")
        for r in rows:
            table.add_row(r["workspace"], r["name"], "yes" if r["online"] else "no", f"{r['open']} / {r['max_open']}",
                          ", ".join(r["teams"]) or "-")
        console.print(table)

    run(main)


# --------------------------------------------------------------------------- teams


@teams_app.command("add")
def teams_add_cmd(
    name: str = typer.Argument(...),
    workspace: str = typer.Option(..., "--workspace"),
    route: list[str] = typer.Option([], "--route", help="genre:language (sports:hi), :language (:hi) or default; "
                                                        "repeatable"),
    strategy: str = typer.Option("round_robin", "--strategy", help="round_robin | least_open"),
    online_only: bool = typer.Option(False, "--online-only", help="assign to online agents only"),
) -> None:
    """Add a team and the (genre, language) routes it takes."""

    async def main() -> None:
        routes = [directory.parse_route(r) for r in route]
        async with database() as db:
            await directory.add_team(db, workspace, name, routes=routes, strategy=strategy, online_only=online_only)
        console.print(f"team {name} added to {workspace} ({strategy}, {len(routes)} routes)", markup=False)

    run(main)


@teams_app.command("route")
def teams_route_cmd(team: str = typer.Argument(...), route: str = typer.Argument(..., help="genre:language, "
                                                                                          ":language or default"),
                    workspace: str = typer.Option(..., "--workspace")) -> None:
    """Give a team one more route."""

    async def main() -> None:
        parsed = directory.parse_route(route)
        async with database() as db:
            await directory.add_route(db, workspace, team, parsed)
        console.print(f"team {team} now takes {route}", markup=False)

    run(main)


@teams_app.command("join")
def teams_join_cmd(team: str = typer.Argument(...), agent: str = typer.Argument(...),
                   workspace: str = typer.Option(..., "--workspace")) -> None:
    """Add an agent to a team (same workspace)."""

    async def main() -> None:
        async with database() as db:
            assigned = await directory.join_team(db, workspace, team, agent)
        console.print(f"{agent} joined {team}; {len(assigned)} queued conversations assigned", markup=False)

    run(main)


@teams_app.command("leave")
def teams_leave_cmd(team: str = typer.Argument(...), agent: str = typer.Argument(...),
                    workspace: str = typer.Option(..., "--workspace")) -> None:
    """Remove an agent from a team (its open conversations stay with it)."""

    async def main() -> None:
        async with database() as db:
            await directory.leave_team(db, workspace, team, agent)
        console.print(f"{agent} left {team}", markup=False)

    run(main)


@teams_app.command("set")
def teams_set_cmd(team: str = typer.Argument(...), workspace: str = typer.Option(..., "--workspace"),
                  strategy: str | None = typer.Option(None, "--strategy", help="round_robin | least_open"),
                  online_only: bool | None = typer.Option(None, "--online-only/--any-agent")) -> None:
    """Change a team's strategy or online-only flag."""

    async def main() -> None:
        async with database() as db:
            await directory.set_team(db, workspace, team, strategy=strategy, online_only=online_only)
        console.print(f"team {team} updated", markup=False)

    run(main)


@teams_app.command("list")
def teams_list_cmd(workspace: str | None = typer.Option(None, "--workspace"),
                   as_json: bool = typer.Option(False, "--json")) -> None:
    """Teams with routes, members and queue length."""

    async def main() -> None:
        async with database() as db:
            rows = await directory.list_teams(db, workspace)
        if as_json:
            _print_json(rows)
            return
        table = Table("workspace", "team", "strategy", "routes", "members", "queued")
        for r in rows:
            strategy = r["strategy"] + (" (online only)" if r["online_only"] else "")
            table.add_row(r["workspace"], r["name"], strategy, ", ".join(r["routes"]) or "-",
                          ", ".join(r["members"]) or "-", str(r["queued"]))
        console.print(table)

    run(main)
