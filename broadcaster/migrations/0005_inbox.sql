-- Inbound companion (issue 8): agents, teams, routes, conversations, inbound messages, replies,
-- service windows, rule actions, Slack escalations.
--
-- Conversation states (one word per idea, the same in code, logs and CLI):
--   bot       only rules have answered so far (no human needed)
--   queued    needs a human; waits in its team queue (team_id NULL = no team route matched)
--   assigned  needs a human; an agent holds it (counts against the agent's open cap)
--   resolved  closed; the contact's next message opens a new conversation (a new measurement)

CREATE TABLE inbox_agents (
    id             serial PRIMARY KEY,
    workspace      text NOT NULL REFERENCES workspaces(name),
    name           text NOT NULL,
    online         boolean NOT NULL DEFAULT true,
    max_open       integer NOT NULL DEFAULT 5 CHECK (max_open >= 0),  -- open-conversation cap
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace, name),
    UNIQUE (id, workspace)                       -- target of the same-workspace membership key
);

CREATE TABLE inbox_teams (
    id             serial PRIMARY KEY,
    workspace      text NOT NULL REFERENCES workspaces(name),
    name           text NOT NULL,
    strategy       text NOT NULL DEFAULT 'round_robin' CHECK (strategy IN ('round_robin', 'least_open')),
    online_only    boolean NOT NULL DEFAULT false,   -- offline agents get nothing new
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace, name),
    UNIQUE (id, workspace)
);

-- Which team takes a contact: (genre, language) exact, then (NULL, language), then (NULL, NULL).
-- Genre and language are stored canonical (segments.canon).
CREATE TABLE inbox_team_routes (
    team_id        integer NOT NULL,
    workspace      text NOT NULL,
    genre          text,
    language       text,
    CHECK (genre IS NULL OR language IS NOT NULL),  -- genre-only routes are not a fallback level
    FOREIGN KEY (team_id, workspace) REFERENCES inbox_teams (id, workspace) ON DELETE CASCADE,
    UNIQUE NULLS NOT DISTINCT (workspace, genre, language)
);

-- Membership never crosses workspaces: both keys carry the workspace.
CREATE TABLE inbox_team_members (
    team_id        integer NOT NULL,
    agent_id       integer NOT NULL,
    workspace      text NOT NULL,
    last_assigned  bigint,                        -- round-robin turn (inbox_assign_seq); NULL = never
    PRIMARY KEY (team_id, agent_id),
    FOREIGN KEY (team_id, workspace) REFERENCES inbox_teams (id, workspace) ON DELETE CASCADE,
    FOREIGN KEY (agent_id, workspace) REFERENCES inbox_agents (id, workspace) ON DELETE CASCADE
);
CREATE INDEX inbox_team_members_agent_idx ON inbox_team_members (agent_id);
CREATE SEQUENCE inbox_assign_seq;

CREATE TABLE inbox_conversations (
    id                   bigserial PRIMARY KEY,
    workspace            text NOT NULL REFERENCES workspaces(name),
    contact_id           bigint NOT NULL REFERENCES contacts(id),
    phone_number_id      text,                    -- the business number the contact wrote to
    status               text NOT NULL DEFAULT 'bot'
                         CHECK (status IN ('bot', 'queued', 'assigned', 'resolved')),
    team_id              integer REFERENCES inbox_teams(id) ON DELETE SET NULL,
    agent_id             integer REFERENCES inbox_agents(id) ON DELETE SET NULL,
    campaign_id          integer REFERENCES campaigns(id),  -- first reply that quoted a broadcast
    reopens              bigint REFERENCES inbox_conversations(id),
    first_inbound_at     timestamptz NOT NULL,     -- the measurement starts here
    last_inbound_at      timestamptz NOT NULL,
    queued_at            timestamptz,              -- team queue order (oldest first)
    assigned_at          timestamptz,
    first_bot_reply_at   timestamptz,
    first_human_reply_at timestamptz,
    first_human_agent_id integer REFERENCES inbox_agents(id) ON DELETE SET NULL,
    resolved_at          timestamptz,
    resolved_by          text CHECK (resolved_by IN ('bot', 'agent')),
    resolved_agent_id    integer REFERENCES inbox_agents(id) ON DELETE SET NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
-- at most one open conversation per contact (the upsert target of every inbound message)
CREATE UNIQUE INDEX inbox_conversations_open_idx ON inbox_conversations (contact_id) WHERE status <> 'resolved';
CREATE INDEX inbox_conversations_queue_idx ON inbox_conversations (team_id, queued_at, id) WHERE status = 'queued';
CREATE INDEX inbox_conversations_agent_idx ON inbox_conversations (agent_id) WHERE status = 'assigned';
CREATE INDEX inbox_conversations_first_idx ON inbox_conversations (first_inbound_at);

-- Every inbound message once: the wamid is the dedupe key (Meta delivers at least once).
CREATE TABLE inbox_messages (
    id               bigserial PRIMARY KEY,
    wamid            text NOT NULL UNIQUE,
    workspace        text NOT NULL,
    contact_id       bigint NOT NULL REFERENCES contacts(id),
    conversation_id  bigint REFERENCES inbox_conversations(id),
    phone_number_id  text,
    wa_id            text NOT NULL,
    user_id          text,                        -- BSUID (2026 usernames), when Meta sends one
    type             text NOT NULL,               -- text | button | interactive | image | ...
    body             text,                        -- text body, button label, interactive title, caption
    payload          text,                        -- button payload / interactive reply id
    media            jsonb,                       -- media metadata only (id, mime_type, sha256, ...)
    context_wamid    text,                        -- the business message this replies to
    campaign_id      integer REFERENCES campaigns(id),
    ledger_id        bigint REFERENCES ledger(id),
    sent_at          timestamptz NOT NULL,        -- Meta's `timestamp`
    received_at      timestamptz NOT NULL DEFAULT now(),
    raw              jsonb NOT NULL
);
CREATE INDEX inbox_messages_conversation_idx ON inbox_messages (conversation_id, sent_at);
CREATE INDEX inbox_messages_campaign_idx ON inbox_messages (campaign_id) WHERE campaign_id IS NOT NULL;

-- Outbound free-form replies (rule answers and agent replies); queued bot rows are the outbox.
-- States: queued → sending → sent | failed | unknown | expired (window closed before sending).
CREATE TABLE inbox_replies (
    id                bigserial PRIMARY KEY,
    conversation_id   bigint NOT NULL REFERENCES inbox_conversations(id),
    source_message_id bigint UNIQUE REFERENCES inbox_messages(id),  -- one rule answer per inbound message
    author            text NOT NULL CHECK (author IN ('bot', 'agent')),
    agent_id          integer REFERENCES inbox_agents(id) ON DELETE SET NULL,
    rule_id           text,
    phone_number_id   text,
    wa_id             text NOT NULL,
    body              text NOT NULL,
    preview_url       boolean NOT NULL DEFAULT false,
    state             text NOT NULL DEFAULT 'queued'
                      CHECK (state IN ('queued', 'sending', 'sent', 'failed', 'unknown', 'expired')),
    attempts          integer NOT NULL DEFAULT 0,
    lease_until       timestamptz,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    wamid             text,
    error_code        integer,
    error             text,
    created_at        timestamptz NOT NULL DEFAULT now(),  -- the reply's logical time (FRT)
    sent_at           timestamptz
);
CREATE INDEX inbox_replies_outbox_idx ON inbox_replies (next_attempt_at, id) WHERE state IN ('queued', 'sending');

-- The 24 h customer-service window per (business number, user): max inbound timestamp + 24 h.
CREATE TABLE inbox_service_windows (
    phone_number_id  text NOT NULL,
    wa_id            text NOT NULL,
    contact_id       bigint NOT NULL REFERENCES contacts(id),
    last_inbound_at  timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL,
    PRIMARY KEY (phone_number_id, wa_id)
);

-- What the rules did with each inbound message: exactly one row per stored message.
CREATE TABLE inbox_rule_actions (
    id               bigserial PRIMARY KEY,
    message_id       bigint NOT NULL UNIQUE REFERENCES inbox_messages(id),
    conversation_id  bigint REFERENCES inbox_conversations(id),
    rules_version    integer,
    rule_id          text,                        -- NULL when no rule matched
    action           text NOT NULL,               -- opt_out | opt_in | faq | escalate | route | ignore
    language         text,
    detail           jsonb NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now()
);

-- Slack escalations: queued in the webhook's transaction, posted by a worker (never inline).
-- dedup_key = one post per conversation escalation. States: pending → sending → sent | failed.
CREATE TABLE inbox_escalations (
    id               bigserial PRIMARY KEY,
    conversation_id  bigint NOT NULL REFERENCES inbox_conversations(id),
    dedup_key        text NOT NULL UNIQUE,
    reason           text NOT NULL,
    payload          jsonb NOT NULL,              -- the Slack message, built when queued
    state            text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sending', 'sent', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    lease_until      timestamptz,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz
);
CREATE INDEX inbox_escalations_due_idx ON inbox_escalations (next_attempt_at, id) WHERE state IN ('pending', 'sending');
