-- Status webhooks for free-form inbox replies are matched by wamid (inbound/statuses.py).
CREATE INDEX inbox_replies_wamid_idx ON inbox_replies (wamid) WHERE wamid IS NOT NULL;
