-- Schedules: a one-off launch time or a recurring cron, read in an IANA zone, fired by
-- `broadcaster scheduler tick|run`. Kinds:
--   once   campaign_id is the campaign (state 'scheduled') to launch at next_run_at
--   every  campaign_id is the series definition (state 'recurring', never sent itself); each firing
--          creates a new campaign from it, so the segment is resolved afresh at run time
-- A due schedule is claimed by locking its row (FOR NO KEY UPDATE SKIP LOCKED) for the whole firing,
-- and the firing moves next_run_at past now in the same transaction: overlapping ticks never fire
-- one slot twice. schedule_runs (schedule_id, slot) makes a retried firing reuse its campaign.
-- States: active | done | missed (older than the horizon, not started) | failed | cancelled

CREATE TABLE schedules (
    id               serial PRIMARY KEY,
    campaign_id      integer NOT NULL UNIQUE REFERENCES campaigns(id),
    kind             text NOT NULL CHECK (kind IN ('once', 'every')),
    cron             text,                                -- 5-field expression, for kind 'every'
    timezone         text NOT NULL,                       -- IANA name the times are read in
    next_run_at      timestamptz,                         -- the next slot to fire; NULL when none is left
    state            text NOT NULL DEFAULT 'active',
    runs             integer NOT NULL DEFAULT 0,          -- firings that started a campaign
    last_slot_at     timestamptz,                         -- the slot handled last (fired, missed or failed)
    last_fired_at    timestamptz,                         -- when that happened (wall clock of the ticker)
    last_run_id      integer REFERENCES campaigns(id),
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'every') = (cron IS NOT NULL))
);
-- the due scan: only active schedules, earliest first
CREATE INDEX schedules_due_idx ON schedules (next_run_at, id) WHERE state = 'active';

CREATE TABLE schedule_runs (
    schedule_id      integer NOT NULL REFERENCES schedules(id),
    slot             timestamptz NOT NULL,                -- the instant the run was due
    campaign_id      integer NOT NULL UNIQUE REFERENCES campaigns(id),
    late_s           double precision NOT NULL DEFAULT 0, -- how long after the slot it started
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schedule_id, slot)
);
