-- carrierd short links and opt-out URLs (DOMAIN §12): one "-- name: x" block
-- per statement, the time always passed in.

-- name: insert_message_links
-- The links minted at intake, in the intake transaction. Per link ($1-$3):
-- its code, its message and its target (NULL: the opt-out URL); per
-- message ($4-$6): its number and its opt-out URL's expiry. Few arrays on
-- purpose: each element costs the driver more than the statement.
-- Links are numbered in the order intake minted them (link 1 first; the
-- opt-out URL, 0, last). A code already taken fails the statement
-- (store/db.py turns it into LinkCodeTaken and intake mints again).
WITH link AS (
    SELECT code, message_id, target_url,
           row_number() OVER (PARTITION BY message_id ORDER BY n) AS nth
    FROM unnest($1::text[], $2::bigint[], $3::text[]) WITH ORDINALITY
         AS t(code, message_id, target_url, n)
),
message AS (
    SELECT * FROM unnest($4::bigint[], $5::text[], $6::timestamptz[])
           AS m(message_id, msisdn, optout_expires_at)
)
INSERT INTO message_links (code, message_id, kind, link_no, target_url, account_id, msisdn,
                           created_at, expires_at)
SELECT link.code, link.message_id,
       CASE WHEN link.target_url IS NULL THEN 'optout' ELSE 'link' END,
       CASE WHEN link.target_url IS NULL THEN 0 ELSE link.nth END,
       link.target_url, $7, message.msisdn, $8,
       CASE WHEN link.target_url IS NULL THEN message.optout_expires_at END
FROM link JOIN message USING (message_id);

-- name: links_follow
-- One batch of requests for codes ($1, each once, sorted so two daemons
-- lock rows in one order; $2 how many requests each): every live link
-- counts them, its first click kept once set. Returns the live links found;
-- a code missing from the answer is unknown or expired (links_lookup).
UPDATE message_links l
   SET clicks = l.clicks + h.n,
       first_click_at = coalesce(l.first_click_at, $3),
       last_click_at = greatest(l.last_click_at, $3)
  FROM unnest($1::text[], $2::int[]) AS h(code, n)
 WHERE l.code = h.code AND (l.expires_at IS NULL OR l.expires_at > $3)
RETURNING l.code, l.kind, l.target_url, l.msisdn;

-- name: links_lookup
-- Codes that links_follow did not find: which of them exist (expired).
SELECT code, kind, expires_at FROM message_links WHERE code = ANY($1::text[]);

-- name: links_optout_target
-- The opt-out URL being confirmed, locked so two confirmations are one.
SELECT code, account_id, msisdn, expires_at, confirmed_at
FROM message_links WHERE code = $1 AND kind = 'optout'
FOR UPDATE;

-- name: links_optout_confirmed
UPDATE message_links SET confirmed_at = coalesce(confirmed_at, $2) WHERE code = $1;

-- name: links_of_messages
-- The click log of messages (status view, export, callbacks).
SELECT message_id, kind, link_no, target_url, clicks, first_click_at
FROM message_links WHERE message_id = ANY($1::bigint[])
ORDER BY message_id, link_no;

-- name: opens_of_messages
SELECT message_id, opened_at FROM message_opens WHERE message_id = ANY($1::bigint[]);

-- name: record_message_open
-- +Message opened ("displayed"); the earliest report wins.
INSERT INTO message_opens (message_id, opened_at, recorded_at) VALUES ($1, $2, $3)
ON CONFLICT (message_id) DO UPDATE SET opened_at = least(message_opens.opened_at, excluded.opened_at);

-- name: purge_expired_optout_links
-- Retention: opt-out URLs whose 60 days ran out by $1, at most $2 at a
-- time (one short transaction each); returns how many went.
WITH doomed AS (
    SELECT code FROM message_links
    WHERE expires_at <= $1
    ORDER BY expires_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
),
deleted AS (
    DELETE FROM message_links l USING doomed d WHERE l.code = d.code RETURNING 1
)
SELECT count(*)::int FROM deleted;
