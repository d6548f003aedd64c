-- A retry campaign names the campaign it retries, durably (its pause detail is cleared on resume):
-- a later retry of the same campaign leaves out the recipients an earlier one already holds.
ALTER TABLE campaigns ADD COLUMN retry_of integer REFERENCES campaigns(id);
UPDATE campaigns f SET retry_of = s.id
FROM campaigns s
WHERE f.pause_detail ? 'retry_of' AND s.name = f.pause_detail->>'retry_of';
CREATE INDEX campaigns_retry_of_idx ON campaigns (retry_of) WHERE retry_of IS NOT NULL;
