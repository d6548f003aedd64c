"""Routing in Postgres: teams for every genre × language of the sample, fallbacks, assignment
strategies, the per-agent cap and the team queue (oldest first)."""

from __future__ import annotations

import csv
from datetime import timedelta
from pathlib import Path

import pytest
import trio

from broadcaster.db import Database
from broadcaster.errors import NotFoundError, StateError
from broadcaster.inbox import directory
from broadcaster.inbox.conversations import resolve_conversation
from broadcaster.inbox.routing import route_key, team_for
from tests.integration.test_inbox_handler import T0, Env, add_contact, make_env, text, value_for

SAMPLE = Path("/work/shared/data/contacts_5k.csv")


@pytest.fixture(scope="module")
def sample_pairs() -> set[tuple[str, str]]:
    """(genre, language) exactly as written in the sample's `originals` workspace, messy spellings included."""
    if not SAMPLE.exists():
        return set()
    with SAMPLE.open(encoding="utf-8") as f:
        return {(r["genre"], r["language"]) for r in csv.DictReader(f) if r["workspace"] == "originals"}


async def _conv(db: Database, conversation_id: int) -> dict:
    row = await db.fetchrow(
        """SELECT c.status, t.name AS team, a.name AS agent FROM inbox_conversations c
             LEFT JOIN inbox_teams t ON t.id = c.team_id LEFT JOIN inbox_agents a ON a.id = c.agent_id
            WHERE c.id = $1""", conversation_id)
    return dict(row)


async def _ask(db: Database, env: Env, wa_id: str, minutes: int = 0) -> int:
    [out] = await env.inbox.handle_messages(db, value_for(env, wa_id, text("hello, I have a question"),
                                                          at=T0 + timedelta(minutes=minutes)),
                                            now=T0 + timedelta(minutes=minutes))
    assert out.action == "route"
    return out.conversation_id


@pytest.mark.skipif(not SAMPLE.exists(), reason="shared sample data not present")
async def test_every_genre_language_of_the_sample_reaches_its_team(db: Database, uniq: str, phone_factory,
                                                                  sample_pairs: set[tuple[str, str]]) -> None:
    raw = sample_pairs
    canon = {route_key(g, lang) for g, lang in raw}
    genres = sorted({g for g, _ in canon if g})
    languages = sorted({lang for _, lang in canon if lang})
    env = await make_env(db, uniq)
    # exact teams for the first six genres, language-only teams for every other language, a default
    for g in genres[:6]:
        for lang in languages:
            await directory.add_team(db, env.workspace, f"{g}-{lang}", routes=[(g, lang)])
    for lang in languages[::2]:
        await directory.add_team(db, env.workspace, f"any-{lang}", routes=[(None, lang)])
    await directory.add_team(db, env.workspace, "default", routes=[(None, None)])
    names = {r["id"]: r["name"] for r in await db.fetch("SELECT id, name FROM inbox_teams WHERE workspace = $1",
                                                         env.workspace)}

    def expected(raw_genre: str, raw_language: str) -> tuple[str, str]:
        genre, language = route_key(raw_genre, raw_language)
        if genre in genres[:6] and language:
            return f"{genre}-{language}", "exact"
        if language in languages[::2]:
            return f"any-{language}", "language"
        return "default", "default"

    async with db.acquire() as conn:  # every raw spelling of the sample, as the handler looks it up
        for raw_genre, raw_language in sorted(raw):
            team_id, level = await team_for(conn, env.workspace, raw_genre or None, raw_language or None)
            assert (names[team_id], level) == expected(raw_genre, raw_language), (raw_genre, raw_language)
    # and end to end through the handler, one contact per fallback level
    for raw_genre, raw_language in [("Comedy", " HI"), ("sports ", "MR"), ("news", "Telugu"), ("Food", "")]:
        wa_id = phone_factory()
        await add_contact(db, env, wa_id, genre=raw_genre, language=raw_language or None)
        conv = await _ask(db, env, wa_id)
        assert (await _conv(db, conv))["team"] == expected(raw_genre, raw_language)[0]


async def test_round_robin_is_fair_and_the_cap_queues_the_rest_oldest_first(db: Database, uniq: str,
                                                                            phone_factory) -> None:
    env = await make_env(db, uniq)
    await directory.add_team(db, env.workspace, "hindi", routes=[(None, "hi")])
    for name in ("asha", "bilal", "chitra"):
        await directory.add_agent(db, env.workspace, name, max_open=2)
        await directory.join_team(db, env.workspace, "hindi", name)
    convs = []
    for i in range(8):
        wa_id = phone_factory()
        await add_contact(db, env, wa_id, language="hi")
        convs.append(await _ask(db, env, wa_id, minutes=i))
    states = [await _conv(db, c) for c in convs]
    assert [s["agent"] for s in states] == ["asha", "bilal", "chitra", "asha", "bilal", "chitra", None, None]
    assert [s["status"] for s in states[6:]] == ["queued", "queued"]
    # bilal resolves one: the oldest queued conversation (the 7th) goes to bilal, the 8th keeps waiting
    result = await resolve_conversation(db, convs[1], now=T0 + timedelta(hours=1))
    assert [c for c, _ in result.reassigned] == [convs[6]]
    assert (await _conv(db, convs[6]))["agent"] == "bilal"
    assert (await _conv(db, convs[7]))["status"] == "queued"
    # raising chitra's cap frees a slot at once
    assigned = await directory.set_agent(db, env.workspace, "chitra", max_open=3)
    assert [c for c, _ in assigned] == [convs[7]]
    assert (await _conv(db, convs[7]))["agent"] == "chitra"
    agents = {r["name"]: r["open"] for r in await directory.list_agents(db, env.workspace)}
    assert agents == {"asha": 2, "bilal": 2, "chitra": 3}


async def test_online_only_team_waits_for_an_online_agent(db: Database, uniq: str, phone_factory) -> None:
    env = await make_env(db, uniq)
    await directory.add_team(db, env.workspace, "night", routes=[(None, None)], online_only=True)
    await directory.add_agent(db, env.workspace, "dev", online=False)
    await directory.join_team(db, env.workspace, "night", "dev")
    wa_id = phone_factory()
    await add_contact(db, env, wa_id)
    conv = await _ask(db, env, wa_id)
    assert await _conv(db, conv) == {"status": "queued", "team": "night", "agent": None}
    await directory.set_agent(db, env.workspace, "dev", online=True)
    assert await _conv(db, conv) == {"status": "assigned", "team": "night", "agent": "dev"}


async def test_least_open_sends_work_to_the_lightest_agent(db: Database, uniq: str, phone_factory) -> None:
    env = await make_env(db, uniq)
    await directory.add_team(db, env.workspace, "rr", routes=[(None, "ta")])
    await directory.add_team(db, env.workspace, "lo", routes=[(None, "hi")], strategy="least_open")
    for name in ("esha", "farid"):
        await directory.add_agent(db, env.workspace, name, max_open=10)
        await directory.join_team(db, env.workspace, "lo", name)
    await directory.join_team(db, env.workspace, "rr", "esha")
    for _ in range(3):  # esha is busy in another team
        wa_id = phone_factory()
        await add_contact(db, env, wa_id, language="ta")
        await _ask(db, env, wa_id)
    picks = []
    for _ in range(3):
        wa_id = phone_factory()
        await add_contact(db, env, wa_id, language="hi")
        picks.append((await _conv(db, await _ask(db, env, wa_id)))["agent"])
    assert picks == ["farid", "farid", "farid"]  # 0,1,2 open vs esha's 3


async def test_workspaces_do_not_share_agents_or_routes(db: Database, uniq: str) -> None:
    a = await make_env(db, uniq, workspace=f"wsa_{uniq}", number=f"pna{uniq}")
    b = await make_env(db, uniq, workspace=f"wsb_{uniq}", number=f"pnb{uniq}")
    await directory.add_team(db, a.workspace, "team", routes=[(None, None)])
    await directory.add_team(db, b.workspace, "team", routes=[(None, None)])  # same name, other workspace: fine
    await directory.add_agent(db, a.workspace, "gita")
    with pytest.raises(NotFoundError, match=rf"^agent 'gita' does not exist in workspace 'wsb_{uniq}'"):
        await directory.join_team(db, b.workspace, "team", "gita")
    with pytest.raises(StateError, match=rf"^route default in workspace 'wsa_{uniq}' already goes to team 'team'$"):
        await directory.add_team(db, a.workspace, "other", routes=[(None, None)])
    teams = await directory.list_teams(db, a.workspace)
    assert [(t["name"], t["routes"], t["members"]) for t in teams] == [("team", ["default"], [])]


async def test_cap_holds_and_nothing_deadlocks_under_concurrent_routing_and_resolving(
        db: Database, uniq: str, phone_factory) -> None:
    """Two teams sharing an agent; messages, resolutions and a cap change race each other."""
    env = await make_env(db, uniq)
    await directory.add_team(db, env.workspace, "hi", routes=[(None, "hi")])
    await directory.add_team(db, env.workspace, "ta", routes=[(None, "ta")], strategy="least_open")
    for name, teams in (("a1", ["hi"]), ("a2", ["hi", "ta"]), ("a3", ["ta"])):
        await directory.add_agent(db, env.workspace, name, max_open=2)
        for team in teams:
            await directory.join_team(db, env.workspace, team, name)
    phones = [(phone_factory(), "hi" if i % 2 else "ta") for i in range(24)]
    for phone, language in phones:
        await add_contact(db, env, phone, language=language)

    async def ask(phone: str) -> None:
        await env.inbox.handle_messages(db, value_for(env, phone, text("hello?")))

    async with trio.open_nursery() as nursery:
        for phone, _ in phones[:16]:
            nursery.start_soon(ask, phone)

    async def open_counts() -> dict[str, int]:
        return {r["name"]: r["open"] for r in await directory.list_agents(db, env.workspace)}

    assert await open_counts() == {"a1": 2, "a2": 2, "a3": 2}
    assigned = [r["id"] for r in await db.fetch(
        "SELECT id FROM inbox_conversations WHERE workspace = $1 AND status = 'assigned'", env.workspace)]
    async with trio.open_nursery() as nursery:
        for conv_id in assigned:
            nursery.start_soon(resolve_conversation, db, conv_id)
        for phone, _ in phones[16:]:
            nursery.start_soon(ask, phone)
        nursery.start_soon(lambda: directory.set_agent(db, env.workspace, "a3", max_open=3))
    counts = await open_counts()
    assert counts == {"a1": 2, "a2": 2, "a3": 3}
    status = dict(await db.fetch("SELECT status, count(*) FROM inbox_conversations WHERE workspace = $1 "
                                 "GROUP BY status", env.workspace))
    assert status == {"resolved": 6, "assigned": 7, "queued": 24 - 6 - 7}
