"""Which templates marketing suppression applies to."""

from __future__ import annotations

import pytest

from broadcaster.campaigns import is_marketing


@pytest.mark.parametrize("category", ["MARKETING", "marketing", None, "", "SPAM", "PROMOTIONAL", " Marketing "])
def test_marketing_and_anything_unexpected_is_suppressed(category: str | None) -> None:
    assert is_marketing(category)


@pytest.mark.parametrize("category", ["UTILITY", "utility", "AUTHENTICATION", " Authentication "])
def test_utility_and_authentication_reach_opted_out_contacts(category: str) -> None:
    assert not is_marketing(category)
