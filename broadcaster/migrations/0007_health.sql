-- Messaging health (issue 12, signals and guards): per-workspace guard thresholds, the time a
-- manager overrode a guard, a number's configured rate ceiling while quality holds it lower,
-- Slack alerts queued in the transaction that decided them, and the indexes the guard check reads.
--
--   guard check (worker, every few s) ─trip─▶ campaigns paused (optout_spike | failure_spike)
--                                          └─▶ health_alerts (one row per trip) ─▶ Slack
--   template / number webhooks ─▶ templates.status/quality, sender_numbers.quality/tier/mps

-- Guard thresholds per workspace; a workspace without a row uses the defaults in broadcaster.health.
-- A share of NULL turns that guard off.
CREATE TABLE workspace_guards (
    workspace       text PRIMARY KEY REFERENCES workspaces(name) ON DELETE CASCADE,
    optout_share    double precision CHECK (optout_share > 0 AND optout_share <= 1),
    failure_share   double precision CHECK (failure_share > 0 AND failure_share <= 1),
    window_s        integer NOT NULL CHECK (window_s BETWEEN 10 AND 86400),
    min_sample      integer NOT NULL CHECK (min_sample >= 1),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- `campaign resume --force` sets this: guards count only what happened after it, so a guard that
-- tripped does not trip again on the same events.
ALTER TABLE campaigns ADD COLUMN guards_since timestamptz;

-- While quality holds a number below its configured rate, the configured value waits here
-- (NULL: `mps` is the configured value). GREEN restores it.
ALTER TABLE sender_numbers ADD COLUMN mps_ceiling integer CHECK (mps_ceiling BETWEEN 1 AND 1000);
-- Quality webhooks name the number by its display number (digits), not its phone_number_id.
ALTER TABLE sender_numbers ADD COLUMN display_phone_number text;

-- Slack posts decided by the health monitor, queued in the deciding transaction (outbox).
-- States: pending → sending → sent | failed. dedup_key: one post per decision.
CREATE TABLE health_alerts (
    id               bigserial PRIMARY KEY,
    dedup_key        text NOT NULL UNIQUE,
    kind             text NOT NULL,               -- optout_spike | failure_spike | template_paused | ...
    campaign_id      integer REFERENCES campaigns(id),
    payload          jsonb NOT NULL,              -- the Slack message, built when queued
    state            text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sending', 'sent', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    lease_until      timestamptz,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz
);
CREATE INDEX health_alerts_due_idx ON health_alerts (next_attempt_at, id) WHERE state IN ('pending', 'sending');

-- The guard check's windows: failures by time (only failed rows: small), replies to a campaign by
-- time. Sends in the window are read through ledger_number_accepted_idx (0008).
CREATE INDEX ledger_campaign_failed_idx ON ledger (campaign_id, failed_at) WHERE failed_at IS NOT NULL;
CREATE INDEX inbox_messages_campaign_time_idx ON inbox_messages (campaign_id, received_at)
    WHERE campaign_id IS NOT NULL;
