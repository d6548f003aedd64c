"""Argument checks shared by the limiters (private). Each raises RateLimitConfigError naming
the owner, the argument and the value."""

from __future__ import annotations

import math

from .errors import RateLimitConfigError


def positive(owner: str, name: str, value: float, unit: str) -> float:
    """``value`` as a float if it is a finite number > 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise RateLimitConfigError(
            f"{owner}: {name} must be a positive finite number of {unit}, got {value!r}"
        )
    return float(value)


def non_negative(owner: str, name: str, value: float, unit: str) -> float:
    """``value`` as a float if it is a finite number >= 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise RateLimitConfigError(
            f"{owner}: {name} must be a finite number of {unit} >= 0, got {value!r}"
        )
    return float(value)


def token_count(owner: str, n: int, most: float) -> int:
    """``n`` if it is an int in 0..most (``most`` = what one grant can ever cover)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise RateLimitConfigError(f"{owner}: n must be an int >= 0 (messages), got {n!r}")
    if n > most:
        raise RateLimitConfigError(
            f"{owner}: n={n} exceeds the most one grant can cover ({most:g} tokens); "
            "such a request could never be served: raise burst or take fewer at a time"
        )
    return n
