"""Canonical language and genre codes; unknown values are kept and flagged, never dropped."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segments.canon import canonical_city, canonical_genre, canonical_language, canonical_tags


@pytest.mark.parametrize(("raw", "code"), [
    ("Hindi", "hi"), ("HI", "hi"), (" hi", "hi"), ("hi ", "hi"), ("TA", "ta"), ("Tamil", "ta"),
    ("Bhojpuri", "bho"), ("Haryanvi", "hne"), ("HNE", "hne"), ("Rajasthani", "raj"), ("or", "or"),
    ("en-us", "en_US"), ("EN_us", "en_US"), ("en", "en"), ("हिंदी", "hi"),
])
def test_known_languages(raw: str, code: str) -> None:
    assert canonical_language(raw) == (code, True)


def test_unknown_language_is_kept_lowercase_and_flagged() -> None:
    assert canonical_language(" Klingon ") == ("klingon", False)


@pytest.mark.parametrize("raw", ["", "   ", None])
def test_empty_language_and_genre_are_none_not_unknown(raw: str | None) -> None:
    assert canonical_language(raw) == (None, True)
    assert canonical_genre(raw) == (None, True)


@pytest.mark.parametrize(("raw", "genre"), [
    ("Comedy", "humor"), ("humour", "humor"), ("HUMOR", "humor"), ("sports ", "sports"),
    ("Sport", "sports"), ("News ", "news"), ("Entertainment", "entertainment"), ("devotional", "devotional"),
])
def test_known_genres(raw: str, genre: str) -> None:
    assert canonical_genre(raw) == (genre, True)


def test_unknown_genre_is_kept_and_flagged() -> None:
    assert canonical_genre("  ASMR   Videos ") == ("asmr videos", False)


def test_tags_are_split_lowered_deduplicated_sorted() -> None:
    assert canonical_tags("Top100; agency_x,,new|top100") == ("agency_x", "new", "top100")
    assert canonical_tags(["B", "a;c"]) == ("a", "b", "c")
    assert canonical_tags("") == ()


def test_city_whitespace_is_collapsed_case_kept() -> None:
    assert canonical_city("  New   Delhi ") == "New Delhi"
    assert canonical_city(" ") is None


@given(st.text())
def test_canonicalisation_is_total(raw: str) -> None:
    for fn in (canonical_language, canonical_genre):
        code, known = fn(raw)
        assert code is None or (code == code.strip() and code)
        assert isinstance(known, bool)
