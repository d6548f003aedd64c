"""The engine side of rate limiting: the Postgres store of each number's send schedule.

`PgSlotStore.reserve` is one round trip per reservation of ~50 ms of send slots (never per
message); the schedule (`rate_slots.tat`) lives in Postgres, so every worker process on every
host shares one rate per number. The arithmetic is `ratelimit.reserve_slots`', on the server's
clock. (Migration 0003's `rate_buckets`/`take_tokens` served the earlier token-bucket store and is
no longer used.)
"""

from __future__ import annotations

import logging

from broadcaster.db import Database, DatabaseUnavailable

log = logging.getLogger("broadcaster.limits")

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
