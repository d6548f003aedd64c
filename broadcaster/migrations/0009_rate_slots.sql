-- The per-number send schedule shared by every worker (ratelimit.PacedLimiter, GCRA with batch
-- reservations): `tat` is when the next free send slot starts, on the server's clock.
CREATE TABLE rate_slots (
    key  text PRIMARY KEY,
    tat  timestamptz NOT NULL
);
