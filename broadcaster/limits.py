"""The engine side of rate limiting: the Postgres-backed token store shared by every worker.

`PgTokenStore.take_tokens` is one round trip per chunk of tokens (never per message); the bucket
state lives in `rate_buckets`, so every worker process on every host shares one budget per number.
The arithmetic is `ratelimit.store_take`'s, on the server's clock:

    tokens  = min(burst, tokens + rate · elapsed);  granted = min(want, floor(tokens))
    wait_s  = 0 if tokens - granted >= 1 else (1 - (tokens - granted)) / rate
"""

from __future__ import annotations

import logging

from broadcaster.db import Database, DatabaseUnavailable

log = logging.getLogger("broadcaster.limits")

# One UPDATE: the row lock is taken once and held only for this statement.
_TAKE = """
WITH cur AS (
    SELECT key, LEAST($4::float8, tokens + $3::float8 * GREATEST(0, extract(epoch FROM clock_timestamp() - updated_at)))
           AS avail, clock_timestamp() AS ts
    FROM rate_buckets WHERE key = $1 FOR UPDATE
)
UPDATE rate_buckets b
SET tokens = cur.avail - LEAST($2::int, floor(cur.avail)), updated_at = cur.ts
FROM cur WHERE b.key = cur.key
RETURNING LEAST($2::int, floor(cur.avail))::int AS granted, b.tokens AS after
"""

_CREATE = """
INSERT INTO rate_buckets (key, tokens, updated_at) VALUES ($1, $2, clock_timestamp())
ON CONFLICT (key) DO NOTHING
"""


class PgTokenStore:
    """ratelimit.TokenStore over Postgres."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.calls = 0

    async def take_tokens(self, key: str, want: int, rate: float, burst: float) -> tuple[int, float]:
        """Tokens granted now and seconds until more; with Postgres away: none, ask again in 1 s."""
        self.calls += 1
        try:
            return await self._take(key, want, rate, burst)
        except DatabaseUnavailable as exc:
            log.warning("take_tokens database unavailable, no tokens for 1 s: %s", exc)
            return 0, 1.0

    async def _take(self, key: str, want: int, rate: float, burst: float) -> tuple[int, float]:
        row = await self.db.fetchrow(_TAKE, key, int(want), float(rate), float(burst))
        if row is None:  # the bucket's first use: create it full, then take
            await self.db.execute(_CREATE, key, float(burst))
            row = await self.db.fetchrow(_TAKE, key, int(want), float(rate), float(burst))
            assert row is not None
        after = float(row["after"])
        return int(row["granted"]), 0.0 if after >= 1 else (1 - after) / rate


# One UPDATE per reservation: ratelimit.reserve_slots on the server's clock.
_RESERVE = """
WITH cur AS (
    SELECT key, GREATEST(tat, clock_timestamp()) AS start, clock_timestamp() AS now
    FROM rate_slots WHERE key = $1 FOR UPDATE
), g AS (
    SELECT key, start, now, extract(epoch FROM start - now)::float8 AS ahead,
           CASE WHEN extract(epoch FROM start - now) > $4::float8 THEN 0
                ELSE LEAST($2::int, floor(($4::float8 - extract(epoch FROM start - now)) * $3::float8) + 1)::int
           END AS granted
    FROM cur
)
UPDATE rate_slots r SET tat = g.start + make_interval(secs => g.granted / $3::float8)
FROM g WHERE r.key = g.key
RETURNING g.ahead, g.granted
"""


class PgSlotStore:
    """ratelimit.SlotStore over Postgres (table `rate_slots`): one round trip per reservation."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.calls = 0

    async def reserve(self, key: str, n: int, rate: float, horizon_s: float) -> tuple[float, int]:
        """Slots granted and when the first starts; with Postgres away: none, ask again in 1 s."""
        self.calls += 1
        try:
            row = await self.db.fetchrow(_RESERVE, key, int(n), float(rate), float(horizon_s))
            if row is None:  # the key's first use
                await self.db.execute("INSERT INTO rate_slots (key, tat) VALUES ($1, clock_timestamp())"
                                      " ON CONFLICT (key) DO NOTHING", key)
                row = await self.db.fetchrow(_RESERVE, key, int(n), float(rate), float(horizon_s))
                assert row is not None
        except DatabaseUnavailable as exc:
            log.warning("reserve database unavailable, no send slots for 1 s: %s", exc)
            return horizon_s + 1.0, 0
        return float(row["ahead"]), int(row["granted"])
