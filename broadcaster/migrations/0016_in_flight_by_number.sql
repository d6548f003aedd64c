-- A claim records the number that will send each row (ledger.phone_number_id), so the daily tier
-- counts rows in flight by that number: exact for pools and for campaigns that send from their
-- workspace's numbers, where guessing from the campaign was not.
DROP INDEX ledger_in_flight_idx;
CREATE INDEX ledger_in_flight_number_idx ON ledger (phone_number_id) WHERE state IN ('claimed', 'unknown');
