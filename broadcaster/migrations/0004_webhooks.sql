-- Webhook receiver (issue 7): raw payloads kept as signed, the status event log, dead letters,
-- other recognised changes, and the trigger that applies a status that arrived before its wamid.
--
--   POST /webhook ─verify─▶ webhook_events (raw, group commit) ─200─▶ apply worker
--        apply worker ─▶ status_events (log; unique (wamid, status)) ─▶ ledger (forward only)
--                     ─▶ status_pending (events whose wamid is not in the ledger yet)
--                     ─▶ webhook_changes (inbound messages, template/quality/account changes)
--                     ─▶ webhook_dead_letters (authentic but unrecognised)
--
-- Status ranks: accepted 1 < sent 2 < delivered 3 < read 4; every other ledger state is 0.
-- `failed` wins over any rank and stays (late rejections follow sent/delivered); nothing moves a
-- row backwards. Timestamps take the earliest value seen, so the result of applying a set of
-- events never depends on their order or on how they were batched.

-- Every authentic POST body, byte for byte (no API can fetch old webhooks again).
CREATE TABLE webhook_events (
    id             bigserial PRIMARY KEY,
    received_at    timestamptz NOT NULL DEFAULT now(),
    body           bytea NOT NULL,                  -- raw bytes, exactly as signed
    processed_at   timestamptz                      -- NULL until the apply worker has handled it
);
CREATE INDEX webhook_events_unprocessed_idx ON webhook_events (id) WHERE processed_at IS NULL;

-- The status event log: one row per (wamid, status), written once; duplicates are no-ops.
-- Which row an event settled: the ledger row with that wamid.
CREATE TABLE status_events (
    id                   bigserial PRIMARY KEY,
    wamid                text NOT NULL,
    status               text NOT NULL,             -- sent | delivered | read | failed | played
    ts                   timestamptz NOT NULL,      -- the payload's `timestamp`
    recipient_id         text,
    callback_data        text,                      -- biz_opaque_callback_data as received
    callback_campaign_id integer,                   -- parsed from callback_data when it is ours
    callback_ledger_id   bigint,
    error_code           integer,
    error_title          text,
    error_details        text,
    webhook_event_id     bigint NOT NULL,           -- webhook_events.id (no FK: checked per row,
                                                    -- it costs as much as the insert itself)
    received_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (wamid, status)
);

-- Logged events not applied yet: no ledger row has their wamid (and the callback data named no
-- row without one), or their row was being written when they came. The row trigger below applies
-- and deletes them the moment their wamid is written. `recheck`: match once more after every
-- wamid writer in flight at the time has committed (see `ledger_wamid_gate`). Kept apart from
-- the log so that applying them never rewrites a log row (a duplicate arriving meanwhile would
-- wait on that rewrite's unique-index entry: a deadlock with the send response's UPDATE).
CREATE TABLE status_pending (
    event_id             bigint PRIMARY KEY,        -- status_events.id
    wamid                text NOT NULL,
    status               text NOT NULL,
    ts                   timestamptz NOT NULL,
    error_code           integer,
    error_title          text,
    callback_campaign_id integer,
    callback_ledger_id   bigint,
    recheck              boolean NOT NULL DEFAULT true,
    created_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX status_pending_wamid_idx ON status_pending (wamid);
CREATE INDEX status_pending_recheck_idx ON status_pending (event_id) WHERE recheck;

-- Authentic but unrecognised: a new `field`, a malformed entry/change/status, a body that is not
-- JSON. Answered 200 (a non-200 makes Meta retry for a week) and kept here for a human.
CREATE TABLE webhook_dead_letters (
    id                bigserial PRIMARY KEY,
    webhook_event_id  bigint NOT NULL REFERENCES webhook_events(id),
    field             text,                         -- the change's `field`, when there was one
    location          text NOT NULL,                -- where in the body: 'entry[0].changes[1]', 'body'
    reason            text NOT NULL,
    payload           jsonb,                        -- the unrecognised part; NULL when the body is not JSON
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_dead_letters_event_idx ON webhook_dead_letters (webhook_event_id);

-- Recognised changes that are not statuses: inbound messages (field 'messages', for the inbox),
-- template/quality/account changes (for the health monitor), value-level errors ('messages.errors').
-- handled_at NULL = no handler has taken it yet (none installed, or it failed `attempts` times).
CREATE TABLE webhook_changes (
    id                bigserial PRIMARY KEY,
    webhook_event_id  bigint NOT NULL REFERENCES webhook_events(id),
    field             text NOT NULL,
    value             jsonb NOT NULL,
    handled_at        timestamptz,
    attempts          integer NOT NULL DEFAULT 0,
    last_error        text,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_changes_unhandled_idx ON webhook_changes (field, id) WHERE handled_at IS NULL;

-- ----------------------------------------------------------------------------- the state rules
-- Mirrored by broadcaster.inbound.statuses.next_state (property-tested against each other).

CREATE FUNCTION status_rank(state text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE state WHEN 'accepted' THEN 1 WHEN 'sent' THEN 2 WHEN 'delivered' THEN 3
                      WHEN 'read' THEN 4 ELSE 0 END
$$;

-- The ledger state after applying events whose best non-failed rank is `best_rank` (NULL: none)
-- and which include a `failed` one or not.
CREATE FUNCTION status_next_state(current text, best_rank integer, failed boolean) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN current = 'failed' THEN 'failed'
        WHEN failed THEN 'failed'
        WHEN best_rank IS NOT NULL AND best_rank > status_rank(current) THEN
            CASE best_rank WHEN 1 THEN 'accepted' WHEN 2 THEN 'sent' WHEN 3 THEN 'delivered'
                           ELSE 'read' END
        ELSE current
    END
$$;

-- ----------------------------------------------------------------------------- early statuses
-- A status can arrive before the send response that carries its wamid has been written. The
-- apply worker then keeps it in status_pending; this trigger applies it when the wamid is written.
--
-- Race: the worker's "wamid not in the ledger" and a writer's "no pending event for my wamid" can
-- both be true when each runs while the other's transaction is still open. Closed with one
-- advisory lock key (0x73746174 = 'stat'): every statement that writes ledger.wamid takes it
-- SHARED before touching a row (statement trigger below; writers never wait on each other); after
-- committing events it could not match, the worker takes it EXCLUSIVE in a fresh transaction
-- (holding nothing else), which waits out every writer in flight, then matches those events again.
-- A writer that starts later sees them as pending in its row trigger. So each early event is
-- matched by the worker's recheck or by the writer's trigger: never neither.
-- Rule for writers: write ledger.wamid only with UPDATE, and not in a transaction that already
-- holds ledger row locks from an earlier statement (the recheck could then wait on it).

CREATE FUNCTION ledger_wamid_gate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(1937006964);  -- 0x73746174
    RETURN NULL;
END
$$;

CREATE TRIGGER ledger_wamid_gate BEFORE UPDATE OF wamid ON ledger
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_wamid_gate();

CREATE FUNCTION ledger_apply_pending_statuses() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    agg record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM status_pending WHERE wamid = NEW.wamid) THEN
        RETURN NEW;
    END IF;
    WITH taken AS (
        DELETE FROM status_pending WHERE wamid = NEW.wamid
        RETURNING status, ts, error_code, error_title
    )
    SELECT max(status_rank(status)) FILTER (WHERE status <> 'failed') AS best_rank,
           coalesce(bool_or(status = 'failed'), false) AS failed,
           min(ts) FILTER (WHERE status = 'sent') AS sent_ts,
           min(ts) FILTER (WHERE status = 'delivered') AS delivered_ts,
           min(ts) FILTER (WHERE status = 'read') AS read_ts,
           min(ts) FILTER (WHERE status = 'failed') AS failed_ts,
           (array_agg(error_code ORDER BY ts) FILTER (WHERE status = 'failed'))[1] AS code,
           (array_agg(error_title ORDER BY ts) FILTER (WHERE status = 'failed'))[1] AS title
      INTO agg FROM taken;
    IF agg.failed AND NEW.state <> 'failed' THEN
        NEW.error_code := agg.code;
        NEW.error_title := agg.title;
    END IF;
    IF agg.failed THEN
        NEW.failed_at := LEAST(NEW.failed_at, agg.failed_ts);
        IF agg.code = 131050 THEN
            WITH opted AS (
                UPDATE contacts SET marketing_opt_in = false, consent_source = 'error_131050',
                                    consent_at = agg.failed_ts, updated_at = now()
                WHERE id = NEW.contact_id AND marketing_opt_in
                  AND (consent_source = 'import' OR consent_at <= agg.failed_ts)
                RETURNING workspace, wa_id
            )
            INSERT INTO consent_events (workspace, wa_id, opted_in, source, detail, at)
            SELECT workspace, wa_id, false, 'error_131050', 'campaign ' || NEW.campaign_id, agg.failed_ts
            FROM opted;
        END IF;
    END IF;
    IF OLD.state = 'unknown' AND NEW.unknown_resolution IS NULL THEN
        NEW.unknown_resolution := 'webhook';  -- a writer settling it itself says how ('late_answer')
    END IF;
    NEW.state := status_next_state(NEW.state, agg.best_rank, agg.failed);
    NEW.sent_at := LEAST(NEW.sent_at, agg.sent_ts);
    NEW.delivered_at := LEAST(NEW.delivered_at, agg.delivered_ts, agg.read_ts);  -- read implies delivered
    NEW.read_at := LEAST(NEW.read_at, agg.read_ts);
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER ledger_apply_pending_statuses BEFORE UPDATE OF wamid ON ledger
    FOR EACH ROW WHEN (NEW.wamid IS NOT NULL AND NEW.wamid IS DISTINCT FROM OLD.wamid)
    EXECUTE FUNCTION ledger_apply_pending_statuses();
