-- carrierd short links and opt-out URLs (DOMAIN §12): one "-- name: x" block
-- per statement, the time always passed in.

-- name: insert_message_links
-- The links minted at intake, in the intake transaction (schema 0190, 0210).
-- Each parameter is one string for the whole batch, a field per message,
-- in message order: driver arrays cost a type check per element, more than
-- the statement itself. Space-separated fields hold no spaces: codes are
-- letters and digits, msisdns canonical, times ISO.
-- Short links, a row per message that has them: $1 its number, $2 its
-- msisdn, $3 its key and $4 its suffixes (link n's at n), $5 the number of
-- its set of target URLs in $6. $6 holds each distinct set once, numbered
-- from 1: the URLs joined by single spaces in link order, the sets
-- separated by newlines (no target URL holds either, domain/links.py); a
-- campaign's thousand recipients share one, stored once in link_targets
-- with the number of messages naming it ($7, a field per set).
-- Opt-out URLs, a row per message that has one: $8 its number, $9 its
-- msisdn, $10 its code and $11 its expiry.
-- Each kind is read in one pass of its own: nothing is materialized or
-- filtered per row, which cost a third of the statement. Returns the rows
-- stored. A key already taken fails the statement; a code equal to a
-- whole-code key leaves its row out. store/db.py turns either into
-- LinkCodeTaken, the transaction (and the sets stored here) rolls back and
-- intake mints again.
WITH target_set AS MATERIALIZED (
    -- Materialized: one id drawn per set, whoever reads it.
    SELECT n::int AS set_no, nextval('link_targets_id_seq') AS id,
           string_to_array(urls, ' ') AS target_urls, messages
    FROM unnest(string_to_array($6, E'\n'), string_to_array($7, ' ')::int[])
         WITH ORDINALITY AS s(urls, messages, n)
),
targets_stored AS (
    INSERT INTO link_targets (id, target_urls, links_left, created_at)
    SELECT id, target_urls, messages, $13::timestamptz FROM target_set
),
links_stored AS (
    INSERT INTO link_sets (key, suffixes, message_id, kind, first_link_no, target_set, account_id,
                           msisdn, created_at)
    SELECT m.key, m.suffixes, m.message_id, 'link', 1, t.id, $12::text, m.msisdn,
           $13::timestamptz
    FROM unnest(string_to_array($1, ' ')::bigint[], string_to_array($2, ' '),
                string_to_array($3, ' '), string_to_array($4, ' '),
                string_to_array($5, ' ')::int[])
         AS m(message_id, msisdn, key, suffixes, set_no)
    -- LEFT: links naming no set fail the table's check, loudly, rather
    -- than go missing and be taken for a code already in use.
    LEFT JOIN target_set t USING (set_no)
    WHERE NOT EXISTS (
        SELECT 1 FROM link_sets w
        WHERE w.suffixes = '' AND left(w.key, -1) = m.key
          AND strpos(m.suffixes, right(w.key, 1)) > 0
    )
    RETURNING 1
),
optouts_stored AS (
    INSERT INTO link_sets (key, suffixes, message_id, kind, first_link_no, account_id, msisdn,
                           created_at, expires_at)
    SELECT left(o.code, -1), right(o.code, 1), o.message_id, 'optout', 0, $12::text, o.msisdn,
           $13::timestamptz, o.expires_at
    FROM unnest(string_to_array($8, ' ')::bigint[], string_to_array($9, ' '),
                string_to_array($10, ' '), string_to_array($11, ' ')::timestamptz[])
         AS o(message_id, msisdn, code, expires_at)
    WHERE NOT EXISTS (
        SELECT 1 FROM link_sets w WHERE w.suffixes = '' AND w.key = o.code
    )
    RETURNING 1
)
SELECT (SELECT count(*) FROM links_stored) + (SELECT count(*) FROM optouts_stored);

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
           (coalesce(l.target_urls, t.target_urls))[strpos(l.suffixes, right(hit.code, 1))]
               AS target_url,
           l.msisdn
    FROM hit JOIN link_sets l ON l.key = left(hit.code, -1)
    LEFT JOIN link_targets t ON t.id = l.target_set
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
