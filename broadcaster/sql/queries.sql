-- Ledger and campaign queries. Each block: `-- name: x`, then a one-line note.

-- name: claim_batch
-- Claim up to $2 sendable rows of the given running campaigns for worker $4, lease $3 seconds.
-- SKIP LOCKED: any number of workers on any hosts share a campaign; none can claim the same row.
-- Sendable: `pending` whose retry time (if any) has come. Contact data comes back for rendering.
-- Pair spacing ($5 s; 0 = off): a row is claimed only if it takes its recipient's slot in
-- recipient_spacing (free once next_at has passed). A claimed row holds the slot until its outcome
-- is recorded (record_results then frees it $5 s later) or its lease ends; the upsert locks the
-- recipient's slot row, so two workers claiming one recipient for two campaigns at once cannot both
-- get it. Hence two sends to one recipient are always at least $5 s apart (the second is claimed
-- after the first's answer was recorded + $5 s). A row that misses its slot, or repeats a recipient
-- within this batch, is deferred (retry_at), never failed and never counted as an attempt.
WITH picked AS (
    SELECT id, wa_id FROM ledger
    WHERE campaign_id = ANY($1::int[])
      AND state = 'pending'
      AND (retry_at IS NULL OR retry_at <= now())
    ORDER BY campaign_id, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), first_per_recipient AS (
    SELECT DISTINCT ON (wa_id) id, wa_id FROM picked WHERE $5::float8 > 0 ORDER BY wa_id, id
), spaced AS (
    INSERT INTO recipient_spacing AS s (wa_id, next_at)
    SELECT wa_id, now() + make_interval(secs => $3) FROM first_per_recipient
    ON CONFLICT (wa_id) DO UPDATE SET next_at = EXCLUDED.next_at WHERE s.next_at <= now()
    RETURNING wa_id
), go AS (
    SELECT p.id FROM picked p WHERE $5::float8 <= 0
    UNION ALL
    SELECT f.id FROM first_per_recipient f JOIN spaced USING (wa_id)
), deferred AS (
    UPDATE ledger l
    SET retry_at = CASE WHEN s.next_at > now() THEN LEAST(s.next_at, now() + make_interval(secs => $5::float8))
                        ELSE now() + make_interval(secs => $5::float8) END,
        updated_at = now()
    FROM picked p LEFT JOIN recipient_spacing s ON s.wa_id = p.wa_id
    WHERE l.id = p.id AND p.id NOT IN (SELECT id FROM go)
)
UPDATE ledger l
SET state = 'claimed', lease_until = now() + make_interval(secs => $3), lease_owner = $4,
    claimed_at = now(), updated_at = now(),
    -- the number that will send it ($6 campaign ids, $7 their numbers): rows in flight count
    -- against that number's daily tier
    phone_number_id = COALESCE((SELECT n.number FROM unnest($6::int[], $7::text[]) AS n(cid, number)
                                WHERE n.cid = l.campaign_id), l.phone_number_id)
FROM go, contacts c
WHERE l.id = go.id AND c.id = l.contact_id
RETURNING l.id, l.campaign_id, l.wa_id, l.language, l.attempts,
          c.name, c.genre, c.language AS contact_language, c.city, c.followers, c.external_id,
          c.attributes

-- name: free_spacing_slots
-- Forget recipients whose spacing slot has passed (they would be free anyway): keeps the table to
-- the last few seconds of recipients.
DELETE FROM recipient_spacing WHERE next_at <= now()

-- name: record_results
-- Write one batch of outcomes (arrays, one element per row). Only rows still leased by this worker
-- change: claimed, or turned `unknown` after the lease expired. A row a status webhook already moved
-- forward (sent/delivered/read/failed) keeps its state; an `accepted` answer then only fills in
-- wamid and accepted_at, so delivery latency is known for it too. With pair spacing ($11 s > 0)
-- the recipients' slots held since the claim become free $11 s from now. Every accepted answer
-- marks its recipient reached now in the sending number's portfolio (the daily tier's count).
WITH spacing AS (
    UPDATE recipient_spacing s SET next_at = now() + make_interval(secs => $11::float8)
    FROM ledger sl
    WHERE $11::float8 > 0 AND sl.id = ANY($1::bigint[]) AND s.wa_id = sl.wa_id
), reach AS (
    INSERT INTO portfolio_reach AS pr (portfolio, wa_id, last_at)
    SELECT DISTINCT ON (COALESCE(sn.portfolio, 'default'), rl.wa_id) COALESCE(sn.portfolio, 'default'), rl.wa_id, now()
    FROM unnest($1::bigint[], $2::text[], $10::text[]) AS a(id, state, number)
    JOIN ledger rl ON rl.id = a.id
    LEFT JOIN sender_numbers sn ON sn.phone_number_id = a.number
    WHERE a.state = 'accepted'
    ORDER BY COALESCE(sn.portfolio, 'default'), rl.wa_id
    ON CONFLICT (portfolio, wa_id) DO UPDATE SET last_at = EXCLUDED.last_at
)
UPDATE ledger l
SET state = CASE WHEN l.state IN ('claimed', 'unknown') THEN r.state ELSE l.state END,
    wamid = COALESCE(l.wamid, r.wamid),
    error_code = CASE WHEN l.state NOT IN ('claimed', 'unknown') THEN l.error_code
                      WHEN r.state IN ('accepted', 'pending') THEN r.code ELSE COALESCE(r.code, l.error_code) END,
    error_title = CASE WHEN l.state NOT IN ('claimed', 'unknown') THEN l.error_title
                       WHEN r.state IN ('accepted', 'pending') THEN r.title ELSE COALESCE(r.title, l.error_title) END,
    attempts = l.attempts + r.attempt_inc,
    retry_at = CASE WHEN l.state IN ('claimed', 'unknown') THEN r.retry_at ELSE l.retry_at END,
    skip_reason = COALESCE(r.skip_reason, l.skip_reason),
    accepted_at = CASE WHEN r.state = 'accepted' THEN COALESCE(l.accepted_at, now()) ELSE l.accepted_at END,
    failed_at = CASE WHEN r.state = 'failed' AND l.state IN ('claimed', 'unknown') THEN now() ELSE l.failed_at END,
    unknown_resolution = CASE WHEN l.state = 'unknown' AND r.state = 'accepted' THEN 'late_answer'
                              ELSE l.unknown_resolution END,
    lease_until = NULL,
    lease_owner = CASE WHEN r.state = 'unknown' THEN l.lease_owner ELSE NULL END,
    phone_number_id = COALESCE(r.number, l.phone_number_id),
    updated_at = now()
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::int[], $5::text[], $6::int[],
            $7::timestamptz[], $8::text[], $10::text[])
     AS r(id, state, wamid, code, title, attempt_inc, retry_at, skip_reason, number)
WHERE l.id = r.id
  AND ((l.lease_owner = $9 AND l.state IN ('claimed', 'unknown'))
       -- moved on by a status (which dropped the lease): the same send, by wamid, fills accepted_at
       OR (r.state = 'accepted' AND l.state IN ('sent', 'delivered', 'read', 'failed')
           AND l.accepted_at IS NULL AND (l.wamid IS NULL OR l.wamid = r.wamid)))

-- name: expire_leases
-- Rows whose lease ran out while claimed may have been sent (the worker died mid-batch): they become
-- `unknown`, never `pending`, so nobody re-sends them blindly. Webhooks or the grace policy settle them.
UPDATE ledger SET state = 'unknown', updated_at = now()
WHERE campaign_id = ANY($1::int[]) AND state = 'claimed' AND lease_until < now()

-- name: resolve_unknown_resend
-- Unknown rows older than their campaign's grace period, policy `resend`: back to pending, counted.
UPDATE ledger l SET state = 'pending', unknown_resolution = 'resent', lease_owner = NULL,
       retry_at = NULL, updated_at = now()
FROM campaigns k
WHERE l.campaign_id = k.id AND k.id = ANY($1::int[]) AND k.unknown_policy = 'resend'
  AND l.state = 'unknown' AND l.updated_at < now() - make_interval(secs => k.unknown_grace_s)

-- name: resolve_unknown_fail
-- Unknown rows older than their campaign's grace period, policy `fail`: failed, counted.
UPDATE ledger l SET state = 'failed', unknown_resolution = 'failed', failed_at = now(), updated_at = now()
FROM campaigns k
WHERE l.campaign_id = k.id AND k.id = ANY($1::int[]) AND k.unknown_policy = 'fail'
  AND l.state = 'unknown' AND l.updated_at < now() - make_interval(secs => k.unknown_grace_s)

-- name: release_claims
-- Give back rows claimed by this worker that were never sent (clean shutdown, pause, breaker); their
-- recipients' spacing slots are free again at once.
WITH freed AS (
    DELETE FROM recipient_spacing s USING ledger l
    WHERE l.id = ANY($1::bigint[]) AND l.lease_owner = $2 AND l.state = 'claimed' AND s.wa_id = l.wa_id
)
UPDATE ledger SET state = 'pending', lease_until = NULL, lease_owner = NULL, updated_at = now()
WHERE id = ANY($1::bigint[]) AND lease_owner = $2 AND state = 'claimed'

-- name: campaign_counts
-- Recipients per ledger state for one campaign: every report number derives from this.
SELECT state, count(*)::bigint AS n FROM ledger WHERE campaign_id = $1 GROUP BY state

-- name: unsettled_count
-- Rows not yet in a terminal state; a campaign is complete exactly when this is zero.
SELECT count(*) FROM ledger WHERE campaign_id = $1 AND state IN ('pending', 'claimed', 'unknown')

-- name: next_retry_at
-- When the earliest deferred row of these campaigns becomes sendable (NULL if none is deferred).
SELECT min(retry_at) FROM ledger
WHERE campaign_id = ANY($1::int[]) AND state = 'pending' AND retry_at > now()

-- name: complete_campaign
-- running → completed, only when nothing is left unsettled (decided by the ledger, not a counter).
UPDATE campaigns SET state = 'completed', finished_at = now(), updated_at = now()
WHERE id = $1 AND state = 'running'
  AND NOT EXISTS (SELECT 1 FROM ledger WHERE campaign_id = $1 AND state IN ('pending', 'claimed', 'unknown'))
RETURNING id

-- name: running_campaigns
-- Campaigns workers may send for.
SELECT id, name, workspace, template_name, default_language, variables, phone_number_id
FROM campaigns WHERE state = 'running' ORDER BY id

-- name: failures_by_code
-- Failed rows per error code for one campaign.
SELECT error_code, max(error_title) AS title, count(*)::bigint AS n FROM ledger
WHERE campaign_id = $1 AND state = 'failed' GROUP BY error_code ORDER BY n DESC

-- name: skipped_by_reason
-- Skipped rows per reason for one campaign.
SELECT skip_reason, count(*)::bigint AS n FROM ledger
WHERE campaign_id = $1 AND state = 'skipped' GROUP BY skip_reason ORDER BY n DESC

-- name: tier_usage
-- The daily tier of number $1's business portfolio ($2: the deployment's default number, counted
-- with it when it is in the same portfolio): unique recipients reached in the rolling 24 h (an
-- index-only range scan of portfolio_reach), the oldest of them (budget frees up 24 h after it),
-- and rows in flight (claimed) or perhaps sent (unknown) by one of the portfolio's numbers (the
-- claim records the sending number; through ledger_in_flight_number_idx).
WITH p AS (SELECT portfolio_numbers($1, $2) AS ids, portfolio_of($1) AS portfolio),
reached AS (
    SELECT count(*) AS reached, min(r.last_at) AS oldest
    FROM portfolio_reach r, p
    WHERE r.portfolio = p.portfolio AND r.last_at > now() - interval '24 hours'
), flight AS (
    SELECT count(*) AS in_flight
    FROM ledger l, p
    WHERE l.state IN ('claimed', 'unknown') AND l.phone_number_id = ANY(p.ids)
)
SELECT reached, oldest, in_flight FROM reached, flight
