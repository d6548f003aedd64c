-- Consent is never assumed: a contact row written without marketing_opt_in is not opted in.
-- (Every insert path of the application already sets it; this closes the door for ad-hoc inserts.)
ALTER TABLE contacts ALTER COLUMN marketing_opt_in SET DEFAULT false;
