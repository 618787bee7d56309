-- carrierd short links and opt-out URLs (DOMAIN §12): one "-- name: x" block
-- per statement, the time always passed in.

-- name: insert_message_links
-- The links minted at intake, in the intake transaction. One element per
-- message in each array, not one per link: each element costs the driver
-- more than the statement does. Per message: its number, its link codes
-- and their target URLs each joined by single spaces in link order (link 1
-- first; neither a code nor a target URL holds a space, domain/links.py),
-- its opt-out URL's code and expiry (NULL without one) and its msisdn.
-- A code already taken fails the statement (store/db.py turns it into
-- LinkCodeTaken and intake mints again).
WITH message AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                         $6::text[])
           AS m(message_id, link_codes, target_urls, optout_code, optout_expires_at, msisdn)
)
INSERT INTO message_links (code, message_id, kind, link_no, target_url, account_id, msisdn,
                           created_at, expires_at)
SELECT link.code, message.message_id, 'link', link.link_no::smallint, link.target_url,
       $7::text, message.msisdn, $8::timestamptz, NULL::timestamptz
FROM message,
     unnest(string_to_array(message.link_codes, ' '), string_to_array(message.target_urls, ' '))
         WITH ORDINALITY AS link(code, target_url, link_no)
UNION ALL
SELECT optout_code, message_id, 'optout', 0::smallint, NULL, $7::text, msisdn, $8::timestamptz,
       optout_expires_at
FROM message WHERE optout_code IS NOT NULL;

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
