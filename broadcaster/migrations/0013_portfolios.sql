-- Meta counts the daily messaging limit per business portfolio, shared by all its numbers (API doc
-- §3.3). Numbers carry their portfolio; the tier budget counts unique recipients across it.
ALTER TABLE sender_numbers ADD COLUMN portfolio text NOT NULL DEFAULT 'default';

-- Every number of `num`'s portfolio (num itself included, registered or not), plus the deployment's
-- default number (WHATSAPP_PHONE_NUMBER_ID) when it is in that portfolio. Unregistered numbers are
-- in the 'default' portfolio.
CREATE FUNCTION portfolio_numbers(num text, default_num text) RETURNS text[] LANGUAGE sql STABLE AS $$
    WITH me AS (SELECT coalesce((SELECT portfolio FROM sender_numbers WHERE phone_number_id = num),
                                'default') AS p)
    SELECT array_agg(DISTINCT x) FROM (
        SELECT phone_number_id AS x FROM sender_numbers WHERE portfolio = (SELECT p FROM me)
        UNION ALL SELECT num
        UNION ALL SELECT default_num
        WHERE coalesce((SELECT portfolio FROM sender_numbers WHERE phone_number_id = default_num),
                       'default') = (SELECT p FROM me)
    ) t WHERE x IS NOT NULL
$$;
