"""The `inbox`, `agents` and `teams` command groups against the real database (typer's CliRunner)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import orjson
import pytest
import trio
from typer.testing import CliRunner

from broadcaster.commands.inbox import agents_app, inbox_app, parse_since, teams_app
from broadcaster.db import open_db
from broadcaster.errors import UsageError
from tests.integration.test_inbox_handler import T0, add_contact, make_env, text, value_for

EXAMPLE_RULES = Path(__file__).resolve().parents[2] / "examples" / "rules.toml"
runner = CliRunner()


def one_line(stream: str) -> str:
    """rich wraps long lines at the terminal width; the message is the words."""
    return " ".join(stream.split())


def ok(app, *args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output + result.stderr
    return result.stdout


def test_agents_teams_and_a_conversation_through_the_cli(db_url: str, uniq: str, phone_factory) -> None:
    phone = phone_factory()
    ws = f"ws_{uniq}"

    async def inbound() -> int:
        async with open_db(db_url, max_size=2) as db:
            env = await make_env(db, uniq)
            await add_contact(db, env, phone, language="hi", genre="sports")
            [out] = await env.inbox.handle_messages(db, value_for(env, phone, text("hello team")), now=T0)
            return out.conversation_id

    async def setup() -> None:
        async with open_db(db_url, max_size=1) as db:
            await db.execute("INSERT INTO workspaces (name) VALUES ($1)", ws)

    trio.run(setup)
    ok(agents_app, "add", "asha", "--workspace", ws, "--cap", "2")
    dup = runner.invoke(agents_app, ["add", "asha", "--workspace", ws])
    assert dup.exit_code == 1 and one_line(dup.stderr) == f"error: agent 'asha' already exists in workspace '{ws}'"
    ok(teams_app, "add", "hindi-sports", "--workspace", ws, "--route", "Sport:Hindi", "--route", ":bho")
    ok(teams_app, "add", "fallback", "--workspace", ws, "--route", "default", "--strategy", "least_open")
    ok(teams_app, "join", "hindi-sports", "asha", "--workspace", ws)
    teams = orjson.loads(ok(teams_app, "list", "--workspace", ws, "--json"))
    assert [(t["name"], t["routes"], t["members"], t["strategy"]) for t in teams] == [
        ("fallback", ["default"], [], "least_open"), ("hindi-sports", ["*:bho", "sports:hi"], ["asha"], "round_robin")]
    bad = runner.invoke(teams_app, ["add", "x", "--workspace", ws, "--route", "asmr:hi"])
    assert bad.exit_code == 1 and "route 'asmr:hi': unknown genre 'asmr'" in one_line(bad.stderr)

    conv = trio.run(inbound)
    listed = orjson.loads(ok(inbox_app, "list", "--workspace", ws, "--json"))
    assert [(c["id"], c["status"], c["team"], c["agent"], c["wa_id"]) for c in listed] == [
        (conv, "assigned", "hindi-sports", "asha", "********" + phone[-4:])]
    assert "queued for Slack" in one_line(ok(inbox_app, "escalate", str(conv), "--note", "VIP"))
    assert "already escalated" in one_line(ok(inbox_app, "escalate", str(conv)))
    assert f"conversation {conv} resolved after" in ok(inbox_app, "resolve", str(conv), "--agent", "asha")
    again = runner.invoke(inbox_app, ["resolve", str(conv)])
    assert again.exit_code == 1 and f"conversation {conv} is already resolved" in one_line(again.stderr)
    report = orjson.loads(ok(inbox_app, "report", "--workspace", ws, "--json"))
    assert report["conversations"] == 1 and report["agents"]["asha"]["resolution"]["count"] == 1
    assert "per team" in ok(inbox_app, "report", "--workspace", ws, "--since", "2026-11-30")
    agents = orjson.loads(ok(agents_app, "list", "--workspace", ws, "--json"))
    assert [(a["name"], a["open"], a["max_open"], a["teams"]) for a in agents] == [("asha", 0, 2, ["hindi-sports"])]


@pytest.mark.parametrize(("args", "action", "rule"), [
    (["Stop.", "--language", "hi"], "opt_out", "opt_out"),
    (["please stop these messages", "-l", "en"], "escalate", "consent_complaint"),
    (["व्यूज कैसे बढ़ाएं?", "-l", "Hindi"], "faq", "faq_views"),
    (["Count me in", "--payload", "JOIN_MONSOON"], "escalate", None),
])
def test_test_rule_prints_the_decision(args: list[str], action: str, rule: str | None) -> None:
    out = orjson.loads(ok(inbox_app, "test-rule", *args, "--rules", str(EXAMPLE_RULES), "--json"))
    assert (out["action"], out["rule"], out["rules_version"]) == (action, rule, 1)
    human = ok(inbox_app, "test-rule", *args, "--rules", str(EXAMPLE_RULES))
    assert f"action: {action}" in human


def test_test_rule_names_a_broken_rules_file(tmp_path: Path) -> None:
    bad = tmp_path / "rules.toml"
    bad.write_text('version = 1\n[[rules]]\nid = "x"\nkind = "faq"\nkeywords.en = ["a"]\n', encoding="utf-8")
    result = runner.invoke(inbox_app, ["test-rule", "a", "--rules", str(bad)])
    assert result.exit_code == 1
    assert one_line(result.stderr).startswith(f"error: {bad}, rule 1 ('x'), field reply.en: a faq rule needs a reply")


def test_parse_since() -> None:
    assert parse_since("7d", T0) == T0 - timedelta(days=7)
    assert parse_since("90m", T0) == T0 - timedelta(minutes=90)
    assert parse_since("2026-11-30", T0).isoformat() == "2026-11-30T00:00:00+00:00"
    with pytest.raises(UsageError, match=r"^--since 'last week': give a duration like 7d"):
        parse_since("last week", T0)
