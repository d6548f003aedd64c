"""Routing decisions (pure): team by genre × language with fallbacks; agent picking strategies."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broadcaster.errors import InputError
from broadcaster.inbox.directory import parse_route
from broadcaster.inbox.routing import Candidate, pick_agent, resolve_team, route_key

SAMPLE = Path("/work/shared/data/contacts_5k.csv")


def sample_combinations() -> set[tuple[str, str | None, str | None]]:
    """(workspace, raw genre, raw language) as written in the sample, messy spellings included."""
    with SAMPLE.open(encoding="utf-8") as f:
        return {(r["workspace"], r["genre"], r["language"]) for r in csv.DictReader(f)}


@pytest.mark.skipif(not SAMPLE.exists(), reason="shared sample data not present")
def test_every_genre_language_of_the_sample_routes_with_the_right_fallback() -> None:
    combos = sample_combinations()
    canon = {(ws, *route_key(g, lang)) for ws, g, lang in combos}
    genres = sorted({g for _, g, _ in canon if g})
    languages = sorted({lang for _, _, lang in canon if lang})
    assert len(genres) == 9 and len(languages) == 15  # the sample's vocabulary after canonicalisation
    # exact teams for every (genre, language) with an even genre index; language-only for half the
    # languages; a default team per workspace
    routes: dict[str, dict] = {}
    for ws in ("originals", "aggregators"):
        table = {(g, lang): f"{ws}:{g}:{lang}" for g in genres[::2] for lang in languages}
        table |= {(None, lang): f"{ws}:*:{lang}" for lang in languages[::2]}
        table[(None, None)] = f"{ws}:default"
        routes[ws] = table
    levels = Counter()
    for ws, raw_genre, raw_language in combos:
        genre, language = route_key(raw_genre, raw_language)
        team, level = resolve_team(routes[ws], raw_genre, raw_language)
        levels[level] += 1
        if genre in genres[::2] and language is not None:
            assert (team, level) == (f"{ws}:{genre}:{language}", "exact")
        elif language in languages[::2]:
            assert (team, level) == (f"{ws}:*:{language}", "language")
        else:
            assert (team, level) == (f"{ws}:default", "default")
    assert set(levels) == {"exact", "language", "default"}


def test_messy_spellings_route_like_canonical_ones() -> None:
    routes = {("humor", "hi"): 1, ("sports", "mr"): 2}
    assert resolve_team(routes, "Comedy", " HI") == (1, "exact")
    assert resolve_team(routes, "humour", "Hindi") == (1, "exact")
    assert resolve_team(routes, "Sport", "MR") == (2, "exact")


def test_fallback_order_and_no_team() -> None:
    routes = {("music", "ta"): 1, (None, "ta"): 2, (None, None): 3}
    assert resolve_team(routes, "music", "ta") == (1, "exact")
    assert resolve_team(routes, "news", "ta") == (2, "language")
    assert resolve_team(routes, None, "ta") == (2, "language")  # genre unknown: language-only still applies
    assert resolve_team(routes, "music", None) == (3, "default")
    assert resolve_team(routes, "news", "bn") == (3, "default")
    assert resolve_team({("music", "ta"): 1}, "news", "bn") == (None, "none")


def _cands(n: int, cap: int = 100) -> list[Candidate]:
    return [Candidate(i, True, 0, cap, None) for i in range(1, n + 1)]


def _run(cands: list[Candidate], strategy: str, picks: int, online_only: bool = False) -> list[int | None]:
    order = []
    turn = 0
    for _ in range(picks):
        agent = pick_agent(cands, strategy, online_only)
        order.append(agent)
        if agent is None:
            continue
        turn += 1
        cands = [Candidate(c.agent_id, c.online, c.open_count + 1, c.max_open, turn) if c.agent_id == agent else c
                 for c in cands]
    return order


def test_round_robin_cycles_through_members_in_order() -> None:
    assert _run(_cands(3), "round_robin", 9) == [1, 2, 3, 1, 2, 3, 1, 2, 3]


@given(st.integers(1, 8), st.integers(0, 60))
def test_round_robin_is_fair(agents: int, picks: int) -> None:
    counts = Counter(_run(_cands(agents), "round_robin", picks))
    assert sum(counts.values()) == picks
    if picks:
        assert max(counts.values()) - min(counts.get(a, 0) for a in range(1, agents + 1)) <= 1


def test_cap_stops_assignment() -> None:
    order = _run(_cands(2, cap=2), "round_robin", 6)
    assert order == [1, 2, 1, 2, None, None]


def test_least_open_prefers_the_lightest_agent_then_round_robin() -> None:
    cands = [Candidate(1, True, 3, 10, 5), Candidate(2, True, 1, 10, 9), Candidate(3, True, 1, 10, 2)]
    assert pick_agent(cands, "least_open", False) == 3  # tie on 1 open: the longer-waiting turn
    assert pick_agent(cands, "round_robin", False) == 3  # oldest turn regardless of load


def test_online_only_skips_offline_agents() -> None:
    cands = [Candidate(1, False, 0, 5, None), Candidate(2, True, 4, 5, 7)]
    assert pick_agent(cands, "round_robin", True) == 2
    assert pick_agent(cands, "round_robin", False) == 1
    assert pick_agent([Candidate(1, False, 0, 5, None)], "least_open", True) is None


def test_unknown_strategy_is_named() -> None:
    with pytest.raises(ValueError, match=r"^unknown assignment strategy 'random' \(known: round_robin, least_open\)$"):
        pick_agent(_cands(1), "random", False)


@pytest.mark.parametrize(("spec", "expected"), [
    ("sports:hi", ("sports", "hi")), ("Comedy:Hindi", ("humor", "hi")), (":ta", (None, "ta")),
    ("ta", (None, "ta")), ("*:bho", (None, "bho")), ("default", (None, None)),
])
def test_parse_route(spec: str, expected: tuple) -> None:
    assert parse_route(spec) == expected


def test_parse_route_errors_name_the_value() -> None:
    with pytest.raises(InputError, match=r"^route 'asmr:hi': unknown genre 'asmr'"):
        parse_route("asmr:hi")
    with pytest.raises(InputError, match=r"^route 'sports:klingon': unknown language 'klingon'"):
        parse_route("sports:klingon")
