"""Segment filters: validation names the field, JSON round trip, SQL compiled with parameters only."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segments.filters import FilterError, SegmentFilter, compile_filter


def test_values_are_canonicalised_and_sorted() -> None:
    f = SegmentFilter(workspace=" originals ", genres=("Comedy", "news", "humour"), languages=("Hindi", " TA"),
                      tags_any=("Top100", "new"), cities=("  Mumbai", "PUNE"))
    assert f.workspace == "originals"
    assert f.genres == ("humor", "news")
    assert f.languages == ("hi", "ta")
    assert f.tags_any == ("new", "top100")
    assert f.cities == ("mumbai", "pune")


def test_json_round_trip_keeps_only_constraining_fields() -> None:
    f = SegmentFilter(workspace="w", genres=("news",), followers_min=1000, opted_in=True)
    text = f.to_json()
    assert text == '{"followers_min":1000,"genres":["news"],"opted_in":true,"workspace":"w"}'
    assert SegmentFilter.from_json(text) == f
    assert SegmentFilter.from_json({"workspace": "w", "genres": ["news"], "followers_min": 1000,
                                    "opted_in": True}) == f


@pytest.mark.parametrize(("data", "field", "message"), [
    ({"genres": ["news"]}, "workspace", "is required"),
    ({"workspace": ""}, "workspace", "is required"),
    ({"workspace": "w", "genre": ["news"]}, "genre", r"is not a filter field \(did you mean 'genres'\?\)"),
    ({"workspace": "w", "followers_min": -1}, "followers_min", "must be between 0 and"),
    ({"workspace": "w", "followers_min": 10, "followers_max": 5}, "followers_max", r"must be ≥ followers_min \(10\)"),
    ({"workspace": "w", "followers_min": "10"}, "followers_min", "must be a whole number"),
    ({"workspace": "w", "followers_min": True}, "followers_min", "must be a whole number"),
    ({"workspace": "w", "active_within_days": 0}, "active_within_days", "must be between 1 and"),
    ({"workspace": "w", "genres": "news,x"}, None, None),  # a lone string is one value, accepted
    ({"workspace": "w", "genres": [1]}, "genres", "must be a list of strings"),
    ({"workspace": "w", "genres": {"a": 1}}, "genres", "must be a list of strings"),
    ({"workspace": "w", "opted_in": "yes"}, "opted_in", "must be true, false or null"),
    ({"workspace": "w", "tags_any": ["a"], "tags_none": ["A"]}, "tags_none", "excludes tags that are also required: a"),
])
def test_validation_errors_name_the_field(data: dict, field: str | None, message: str | None) -> None:
    if field is None:
        SegmentFilter.from_json(data)
        return
    with pytest.raises(FilterError, match=rf"^segment filter field '{field}': {message}") as info:
        SegmentFilter.from_json(data)
    assert info.value.field == field


def test_from_json_rejects_non_objects() -> None:
    with pytest.raises(FilterError, match=r"^segment filter field '\(filter\)': must be a JSON object"):
        SegmentFilter.from_json("[1]")
    with pytest.raises(FilterError, match=r"^segment filter field '\(filter\)': is not valid JSON"):
        SegmentFilter.from_json("{")


def test_compile_minimal_filter() -> None:
    sql, params = compile_filter(SegmentFilter(workspace="w"))
    assert (sql, params) == ("c.workspace = $1", ["w"])


def test_compile_every_field_uses_numbered_parameters() -> None:
    f = SegmentFilter(workspace="w", genres=("news",), languages=("hi",), tags_any=("a",), tags_all=("b",),
                      tags_none=("c",), cities=("Pune",), followers_min=1, followers_max=2,
                      active_within_days=30, opted_in=False)
    sql, params = compile_filter(f, first_param=3, alias="k")
    assert sql == (
        "k.workspace = $3 AND k.genre = ANY($4::text[]) AND k.language = ANY($5::text[]) AND "
        "lower(k.city) = ANY($6::text[]) AND k.tags && $7::text[] AND k.tags @> $8::text[] AND "
        "NOT (k.tags && $9::text[]) AND k.followers >= $10::integer AND k.followers <= $11::integer AND "
        "k.last_active_at >= now() - make_interval(days => $12::integer) AND k.marketing_opt_in = $13::boolean"
    )
    assert params == ["w", ["news"], ["hi"], ["pune"], ["a"], ["b"], ["c"], 1, 2, 30, False]


def test_compile_rejects_unsafe_alias() -> None:
    with pytest.raises(ValueError, match=r"^alias must be a plain SQL identifier"):
        compile_filter(SegmentFilter(workspace="w"), alias="c; DROP TABLE contacts")


@given(st.lists(st.text(min_size=1), max_size=5), st.lists(st.text(min_size=1), max_size=5), st.text(min_size=1))
def test_user_text_never_reaches_the_sql(genres: list[str], tags: list[str], workspace: str) -> None:
    try:
        f = SegmentFilter(workspace=workspace, genres=tuple(genres), tags_any=tuple(tags))
    except FilterError:
        return
    sql, params = compile_filter(f)
    # the SQL is built only from fixed fragments and $n placeholders
    assert re.fullmatch(r"[a-z_.() =&@<>>=:$\[\]0-9A-Z,>-]+", sql.replace("make_interval(days => ", "")), sql
    assert len(re.findall(r"\$\d+", sql)) == len(params)
