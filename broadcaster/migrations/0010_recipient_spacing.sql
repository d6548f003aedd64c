-- Pair spacing shared by every worker: when each recipient may next be sent a message.
-- A claim takes a recipient's slot with one INSERT … ON CONFLICT for the whole batch; a row whose
-- recipient's slot is still taken is deferred (retry_at), never failed. UNLOGGED: after a Postgres
-- crash the table is empty, which at worst lets one message through early (then 131056 backs off).
CREATE UNLOGGED TABLE recipient_spacing (
    wa_id   text PRIMARY KEY,
    next_at timestamptz NOT NULL
) WITH (fillfactor = 70);
