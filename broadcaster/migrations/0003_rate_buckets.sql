-- Token buckets shared by every worker process sending for one number (ratelimit.SharedBucket).
-- Arithmetic identical to ratelimit.MemoryTokenStore: tokens = min(burst, tokens + rate·elapsed);
-- granted = min(want, floor(tokens)); wait_s = 0 if tokens_after >= 1 else (1 - tokens_after) / rate. Time is the server's clock_timestamp(), so workers on
-- different hosts share one clock.
CREATE TABLE rate_buckets (
    key         text PRIMARY KEY,
    tokens      double precision NOT NULL,
    updated_at  timestamptz NOT NULL
);

CREATE FUNCTION take_tokens(p_key text, p_want integer, p_rate double precision, p_burst double precision,
                            OUT granted integer, OUT wait_s double precision)
LANGUAGE plpgsql AS $$
DECLARE
    now_ts timestamptz := clock_timestamp();
    cur double precision;
BEGIN
    INSERT INTO rate_buckets (key, tokens, updated_at) VALUES (p_key, p_burst, now_ts)
    ON CONFLICT (key) DO NOTHING;
    SELECT LEAST(p_burst, b.tokens + p_rate * GREATEST(0, extract(epoch FROM now_ts - b.updated_at)))
      INTO cur FROM rate_buckets b WHERE b.key = p_key FOR UPDATE;
    granted := LEAST(p_want, floor(cur))::integer;
    cur := cur - granted;
    UPDATE rate_buckets SET tokens = cur, updated_at = now_ts WHERE key = p_key;
    -- ratelimit.store_take: 0 if a whole token is left, else the time until one is
    IF cur >= 1 THEN
        wait_s := 0;
    ELSE
        wait_s := (1 - cur) / p_rate;
    END IF;
END;
$$;
