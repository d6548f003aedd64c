"""Exceptions raised by the ratelimit package.

The hierarchy (everything ratelimit raises on purpose derives from ``RateLimitError``)::

    RateLimitError                 base; never raised itself
     ├── RateLimitConfigError      also a ValueError: a bad argument (names the class, the
     │                             argument and the value it got)
     ├── TokenStoreError           a TokenStore broke its contract (e.g. granted more than asked)
     └── TierExhausted             (defined in ratelimit.tier) the daily unique-recipient budget
                                   is used up; carries ``resume_at``

The engine maps these onto ``broadcaster.errors`` at its boundary; this package never imports
``broadcaster``.
"""

from __future__ import annotations

__all__ = ["RateLimitConfigError", "RateLimitError", "TokenStoreError"]


class RateLimitError(Exception):
    """Base class of the exceptions the ratelimit package raises."""


class RateLimitConfigError(RateLimitError, ValueError):
    """A limiter was given a bad argument; the message names the argument and the value.

    Fix the configuration (sender number rate/burst, pair interval, AIMD knobs) and retry.
    """


class TokenStoreError(RateLimitError):
    """A ``TokenStore`` returned something outside its contract (granted < 0 or > want, or a
    negative wait). This is a bug in the store implementation, not a throttle."""
