-- Audience: consent history and the indexes that make `segments count` fast at 1M contacts.

-- Every change of a contact's marketing consent, with where it came from. The current state lives
-- on contacts (marketing_opt_in, consent_source, consent_at); this is the audit trail.
CREATE TABLE consent_events (
    id          bigserial PRIMARY KEY,
    workspace   text NOT NULL REFERENCES workspaces(name),
    wa_id       text NOT NULL,
    opted_in    boolean NOT NULL,
    source      text NOT NULL,                 -- import | reply | error_131050 | agent
    detail      text,                          -- the import file, the reply keyword, the agent
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX consent_events_contact_idx ON consent_events (workspace, wa_id, at);

-- Segment counts as index-only scans: the genre × language index of 0001, widened with the columns
-- filters test most (consent, followers range, last active). It replaces contacts_segment_idx (same
-- key columns), so an import maintains no more indexes than before. Index-only scans need the
-- visibility map: the importer runs VACUUM (ANALYZE) after a large import.
DROP INDEX contacts_segment_idx;
CREATE INDEX contacts_audience_idx ON contacts (workspace, genre, language)
    INCLUDE (marketing_opt_in, followers, last_active_at);

-- Segments by language alone (no genre), with or without consent, and by city: without these the
-- count is a sequential scan of the workspace (measured on 1M contacts: 390 ms and 780 ms).
CREATE INDEX contacts_language_idx ON contacts (workspace, language) INCLUDE (marketing_opt_in);
CREATE INDEX contacts_city_idx ON contacts (workspace, lower(city));
