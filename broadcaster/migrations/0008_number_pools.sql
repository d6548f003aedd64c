-- Several sender numbers per campaign (a pool, in order of preference) and, per ledger row, the
-- number that actually sent it: the daily tier is counted per number from these rows.
ALTER TABLE campaigns ADD COLUMN number_pool text[] NOT NULL DEFAULT '{}';
ALTER TABLE ledger ADD COLUMN phone_number_id text;
CREATE INDEX ledger_number_accepted_idx ON ledger (phone_number_id, accepted_at) WHERE accepted_at IS NOT NULL;
