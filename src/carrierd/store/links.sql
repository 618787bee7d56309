-- carrierd short links and opt-out URLs (DOMAIN §12): one "-- name: x" block
-- per statement, the time always passed in.

-- name: insert_message_links
-- The links minted at intake, in the intake transaction (schema 0190).
-- Each parameter is one string for the whole batch, a field per message in
-- message order, "-" standing for none: driver arrays cost a type check per
-- element, more than the statement itself. Per message: $1 its number, $2
-- its short links' key and $3 their suffixes (link n's at n), $4 the
-- number of its target URLs' set in $10, $5 its opt-out URL's code and $6
-- its expiry, $7 its msisdn. $10 holds each distinct set of target URLs
-- once, numbered from 1: the URLs joined by single spaces in link order,
-- the sets separated by newlines (no target URL holds either,
-- domain/links.py); a campaign's thousand recipients share one.
-- Space-separated fields hold no spaces: codes are letters and digits,
-- msisdns canonical, times ISO.
-- A key already taken fails the statement, and so does a code equal to a
-- whole-code key (nothing is inserted): store/db.py turns either into
-- LinkCodeTaken and intake mints again.
WITH target_set AS (
    SELECT n::int AS set_no, string_to_array(urls, ' ') AS target_urls
    FROM unnest(string_to_array($10, E'\n')) WITH ORDINALITY AS s(urls, n)
),
message AS (
    SELECT * FROM unnest(string_to_array($1, ' ')::bigint[], string_to_array($2, ' ', '-'),
                         string_to_array($3, ' ', '-'), string_to_array($4, ' ', '-')::int[],
                         string_to_array($5, ' ', '-'),
                         string_to_array($6, ' ', '-')::timestamptz[], string_to_array($7, ' '))
           AS m(message_id, link_key, link_suffixes, set_no, optout_code,
                optout_expires_at, msisdn)
),
minted AS (
    SELECT link_key AS key, link_suffixes AS suffixes, message_id, 'link' AS kind,
           1 AS first_link_no, t.target_urls, msisdn, NULL::timestamptz AS expires_at
    -- LEFT: links naming no set fail the table's check, loudly, rather
    -- than go missing and be taken for a code already in use.
    FROM message LEFT JOIN target_set t USING (set_no)
    WHERE link_key IS NOT NULL
    UNION ALL
    SELECT left(optout_code, -1), right(optout_code, 1), message_id, 'optout', 0, NULL, msisdn,
           optout_expires_at
    FROM message WHERE optout_code IS NOT NULL
)
INSERT INTO link_sets (key, suffixes, message_id, kind, first_link_no, target_urls, account_id,
                       msisdn, created_at, expires_at)
SELECT key, suffixes, message_id, kind, first_link_no, target_urls, $8::text, msisdn,
       $9::timestamptz, expires_at
FROM minted
WHERE NOT EXISTS (
    SELECT 1
    FROM minted m, string_to_table(m.suffixes, NULL) AS s(suffix), link_sets w
    WHERE w.suffixes = '' AND w.key = m.key || s.suffix
);

-- name: links_follow
-- One batch of requests for codes ($1, each once, sorted so two daemons
-- lock click rows in one order; $2 how many requests each): every live
-- code counts them in link_clicks, its first click kept once written.
-- Returns the live codes found; a code missing from the answer is unknown
-- or expired (links_lookup).
WITH hit AS (
    SELECT h.code, h.n FROM unnest($1::text[], $2::int[]) AS h(code, n)
),
live AS (
    SELECT hit.code, hit.n, l.kind,
           l.target_urls[strpos(l.suffixes, right(hit.code, 1))] AS target_url, l.msisdn
    FROM hit JOIN link_sets l ON l.key = left(hit.code, -1)
    WHERE strpos(l.suffixes, right(hit.code, 1)) > 0
      AND (l.expires_at IS NULL OR l.expires_at > $3)
    UNION ALL
    SELECT hit.code, hit.n, l.kind, l.target_urls[1], l.msisdn
    FROM hit JOIN link_sets l ON l.key = hit.code AND l.suffixes = ''
    WHERE l.expires_at IS NULL OR l.expires_at > $3
),
counted AS (
    INSERT INTO link_clicks AS c (code, clicks, first_click_at, last_click_at)
    SELECT code, n, $3, $3 FROM live ORDER BY code
    ON CONFLICT (code) DO UPDATE
       SET clicks = c.clicks + excluded.clicks,
           last_click_at = greatest(c.last_click_at, excluded.last_click_at)
)
SELECT code, kind, target_url, msisdn FROM live;

-- name: links_lookup
-- Codes that links_follow did not find: which of them exist (expired).
SELECT h.code, l.expires_at
FROM unnest($1::text[]) AS h(code) JOIN link_sets l ON l.key = left(h.code, -1)
WHERE strpos(l.suffixes, right(h.code, 1)) > 0
UNION ALL
SELECT h.code, l.expires_at
FROM unnest($1::text[]) AS h(code) JOIN link_sets l ON l.key = h.code AND l.suffixes = '';

-- name: links_optout_target
-- The opt-out URL being confirmed, locked so two confirmations are one.
SELECT key, account_id, msisdn, expires_at, confirmed_at
FROM link_sets
WHERE kind = 'optout'
  AND ((key = left($1, -1) AND suffixes = right($1, 1)) OR (key = $1 AND suffixes = ''))
FOR UPDATE;

-- name: links_optout_confirmed
-- $1 the key links_optout_target returned.
UPDATE link_sets SET confirmed_at = coalesce(confirmed_at, $2) WHERE key = $1;

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
-- time (one short transaction each), with their click log; returns how
-- many went. An opt-out row holds one code: its key and its one suffix.
WITH doomed AS (
    SELECT key, suffixes FROM link_sets
    WHERE expires_at <= $1
    ORDER BY expires_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
),
clicks_deleted AS (
    DELETE FROM link_clicks c USING doomed d WHERE c.code = d.key || d.suffixes
),
deleted AS (
    DELETE FROM link_sets l USING doomed d WHERE l.key = d.key RETURNING 1
)
SELECT count(*)::int FROM deleted;
