-- What `broadcaster db prune` needs to stay cheap on tables of hundreds of millions of rows:
-- deleting a webhook body checks webhook_changes' foreign key to it (a sequential scan per body
-- without this index), and each step finds its old rows by time. The time columns grow with the
-- insertion order, so BRIN indexes (a few pages each) find the old block ranges.
CREATE INDEX webhook_changes_event_idx ON webhook_changes (webhook_event_id);
CREATE INDEX webhook_events_received_brin ON webhook_events USING brin (received_at);
CREATE INDEX status_events_received_brin ON status_events USING brin (received_at);
CREATE INDEX webhook_dead_letters_created_brin ON webhook_dead_letters USING brin (created_at);
CREATE INDEX webhook_changes_handled_brin ON webhook_changes USING brin (handled_at);
