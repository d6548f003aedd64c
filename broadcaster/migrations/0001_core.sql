-- Core schema: workspaces, contacts, templates, segments, sender numbers, campaigns, the ledger.
-- Ledger states (one word per idea, the same in code, logs and CLI):
--   pending, claimed, accepted, sent, delivered, read, failed, unknown, skipped

CREATE TABLE workspaces (
    name               text PRIMARY KEY,
    timezone           text NOT NULL DEFAULT 'Asia/Kolkata',
    marketing_cap_24h  integer NOT NULL DEFAULT 2,      -- max MARKETING messages per contact per rolling 24 h
    created_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE contacts (
    id                 bigserial PRIMARY KEY,
    workspace          text NOT NULL REFERENCES workspaces(name),
    wa_id              text NOT NULL,                   -- E.164 digits without '+'
    external_id        text,
    name               text,
    language           text,
    genre              text,
    city               text,
    followers          integer,
    last_active_at     timestamptz,
    tags               text[] NOT NULL DEFAULT '{}',
    attributes         jsonb NOT NULL DEFAULT '{}',
    marketing_opt_in   boolean NOT NULL DEFAULT true,
    consent_source     text NOT NULL DEFAULT 'import',  -- import | reply | error_131050 | agent
    consent_at         timestamptz NOT NULL DEFAULT now(),
    status             text NOT NULL DEFAULT 'active',  -- active | unassigned | blocked
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace, wa_id)
);
CREATE INDEX contacts_segment_idx ON contacts (workspace, genre, language);
CREATE INDEX contacts_tags_idx ON contacts USING gin (tags);
CREATE INDEX contacts_wa_id_idx ON contacts (wa_id);

CREATE TABLE templates (
    name               text NOT NULL,
    language           text NOT NULL,                   -- exactly as WhatsApp has it: en <> en_US
    template_id        text,
    status             text NOT NULL,
    category           text NOT NULL,
    parameter_format   text NOT NULL DEFAULT 'POSITIONAL',
    components         jsonb NOT NULL,
    quality            text,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, language)
);

CREATE TABLE segments (
    name               text PRIMARY KEY,
    workspace          text NOT NULL REFERENCES workspaces(name),
    filter             jsonb NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sender_numbers (
    phone_number_id    text PRIMARY KEY,
    workspace          text NOT NULL REFERENCES workspaces(name),
    mps                integer NOT NULL DEFAULT 80,     -- configured messages/s ceiling
    tier               integer,                         -- unique recipients per rolling 24 h; NULL = unlimited
    quality            text NOT NULL DEFAULT 'GREEN',
    created_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE campaigns (
    id                 serial PRIMARY KEY,
    name               text NOT NULL UNIQUE,
    workspace          text NOT NULL REFERENCES workspaces(name),
    segment            text NOT NULL REFERENCES segments(name),
    template_name      text NOT NULL,
    default_language   text NOT NULL,
    variables          jsonb NOT NULL DEFAULT '{}',     -- placeholder key -> 'contact.<field>' or a constant
    unknown_policy     text NOT NULL DEFAULT 'resend',  -- what happens to rows still `unknown` after the grace period
    unknown_grace_s    integer NOT NULL DEFAULT 900,
    phone_number_id    text,
    state              text NOT NULL DEFAULT 'draft',   -- draft|scheduled|running|paused|completed|cancelled
    pause_reason       text,
    pause_detail       jsonb,
    audience_frozen_at timestamptz,
    scheduled_at       timestamptz,
    started_at         timestamptz,
    finished_at        timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX campaigns_state_idx ON campaigns (state);

CREATE TABLE ledger (
    id                 bigserial PRIMARY KEY,
    campaign_id        integer NOT NULL REFERENCES campaigns(id),
    contact_id         bigint NOT NULL REFERENCES contacts(id),
    wa_id              text NOT NULL,
    language           text NOT NULL,
    state              text NOT NULL DEFAULT 'pending',
    attempts           integer NOT NULL DEFAULT 0,      -- send attempts that reached the provider (throttling not counted)
    lease_until        timestamptz,
    lease_owner        text,
    retry_at           timestamptz,
    wamid              text,
    error_code         integer,
    error_title        text,
    skip_reason        text,
    unknown_resolution text,                            -- how an `unknown` row was settled: webhook | resent | failed
    claimed_at         timestamptz,
    accepted_at        timestamptz,
    sent_at            timestamptz,
    delivered_at       timestamptz,
    read_at            timestamptz,
    failed_at          timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (campaign_id, wa_id)
);
-- the claim scan: only rows that can still be claimed
CREATE INDEX ledger_claimable_idx ON ledger (campaign_id, id) WHERE state IN ('pending', 'claimed');
CREATE UNIQUE INDEX ledger_wamid_idx ON ledger (wamid) WHERE wamid IS NOT NULL;
CREATE INDEX ledger_campaign_state_idx ON ledger (campaign_id, state);
CREATE INDEX ledger_contact_idx ON ledger (contact_id, accepted_at);
