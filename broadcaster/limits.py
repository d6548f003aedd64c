"""The engine side of rate limiting: Postgres-backed token store and per-number limiter wiring.

`PgTokenStore.take_tokens` is one round trip per chunk of tokens (never per message); the bucket
state lives in `rate_buckets`, so every worker process on every host shares one budget per number.
"""

from __future__ import annotations

from broadcaster.db import Database


class PgTokenStore:
    """ratelimit.TokenStore over Postgres (function `take_tokens`, migration 0003)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.calls = 0

    async def take_tokens(self, key: str, want: int, rate: float, burst: float) -> tuple[int, float]:
        self.calls += 1
        row = await self.db.fetchrow("SELECT granted, wait_s FROM take_tokens($1, $2, $3, $4)",
                                     key, int(want), float(rate), float(burst))
        assert row is not None
        return int(row["granted"]), float(row["wait_s"])
