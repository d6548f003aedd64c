-- The frequency cap counts a contact's messages accepted in the last 24 h; only accepted rows need
-- to be in that index. Partial, so freezing an audience and claiming rows (accepted_at still NULL)
-- write one index entry fewer per row. (No query looks ledger rows up by contact otherwise, and
-- contacts are never deleted, so the foreign key needs no full index.)
DROP INDEX ledger_contact_idx;
CREATE INDEX ledger_contact_accepted_idx ON ledger (contact_id, accepted_at) WHERE accepted_at IS NOT NULL;
