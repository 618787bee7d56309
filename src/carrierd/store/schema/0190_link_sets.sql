-- DOMAIN §12: a message's short links are one row, not one row per link.
-- Five rows per message, each with two index entries and its own WAL
-- record, were most of what five links added to intake.
--
-- A row holds one message's codes of one kind: its short links (up to
-- five) or its opt-out URL (one). Each code is the row's random `key`
-- followed by one character of `suffixes`, the n-th character being link
-- n's (distinct within the row). A code is found from itself alone: its
-- key is the code less its last character. Guessing is as hard as with
-- independent codes (a guess must hit a live key and one of its
-- suffixes: live codes / 62**length); someone holding one code of a
-- message can find that message's other short links, which are the same
-- recipient's. The opt-out URL is a row of its own, so a forwarded short
-- link never leads to the recipient's opt-out page.
--
-- Rows minted before this migration keep their whole code as the key,
-- with no suffixes (one code per row); intake never mints a code equal to
-- such a key (store/links.sql insert_message_links).
CREATE TABLE link_sets (
    key             text COLLATE "C" PRIMARY KEY,
    suffixes        text COLLATE "C" NOT NULL,
    message_id      bigint NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('link', 'optout')),
    -- The number of the row's first link: 1 (0 for an opt-out URL); a row
    -- from before this migration holds the one link it was.
    first_link_no   smallint NOT NULL CHECK (first_link_no BETWEEN 0 AND 5),
    -- Link n's target URL at n - first_link_no + 1 (kind 'link').
    target_urls     text[],
    account_id      text NOT NULL,
    msisdn          text NOT NULL,
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz,
    -- An opt-out URL whose page was confirmed (the number went on the list).
    confirmed_at    timestamptz,
    CHECK ((kind = 'link') = (target_urls IS NOT NULL)),
    CHECK ((kind = 'optout') = (expires_at IS NOT NULL)),
    CHECK (suffixes = '' OR length(suffixes) = coalesce(cardinality(target_urls), 1))
);
CREATE INDEX link_sets_by_message ON link_sets (message_id);
CREATE INDEX link_sets_optout_expiry ON link_sets (expires_at) WHERE expires_at IS NOT NULL;
-- The rows whose key is a whole code: probed by every redirect and every
-- intake batch, empty once the last of them is purged.
CREATE INDEX link_sets_whole_codes ON link_sets (key) WHERE suffixes = '';

-- The click log, one row per code clicked: written at the first click
-- (first_click_at, never changed after) and counted at every later one.
-- A row of its own, not arrays on the link row: two links of one message
-- clicked in one batch are two rows, and a link never clicked costs nothing.
CREATE TABLE link_clicks (
    code            text COLLATE "C" PRIMARY KEY,
    clicks          integer NOT NULL CHECK (clicks > 0),
    first_click_at  timestamptz NOT NULL,
    last_click_at   timestamptz NOT NULL
) WITH (fillfactor = 85);  -- room for the counting updates to stay HOT

INSERT INTO link_sets (key, suffixes, message_id, kind, first_link_no, target_urls, account_id,
                       msisdn, created_at, expires_at, confirmed_at)
SELECT code, '', message_id, kind, link_no,
       CASE WHEN kind = 'link' THEN ARRAY[target_url] END,
       account_id, msisdn, created_at, expires_at, confirmed_at
FROM message_links;

INSERT INTO link_clicks (code, clicks, first_click_at, last_click_at)
SELECT code, clicks, first_click_at, coalesce(last_click_at, first_click_at)
FROM message_links
WHERE clicks > 0 AND first_click_at IS NOT NULL;

DROP TABLE message_links;

-- The codes one per row, as readers (the message view, export, callbacks,
-- retention) and people at a psql prompt want them.
CREATE VIEW message_links AS
SELECT l.key || substr(l.suffixes, i, 1) AS code,
       l.message_id,
       l.kind,
       (l.first_link_no + i - 1)::smallint AS link_no,
       l.target_urls[i] AS target_url,
       l.account_id,
       l.msisdn,
       l.created_at,
       l.expires_at,
       coalesce(c.clicks, 0) AS clicks,
       c.first_click_at,
       c.last_click_at,
       l.confirmed_at
FROM link_sets l
CROSS JOIN LATERAL generate_series(1, greatest(length(l.suffixes), 1)) AS i
LEFT JOIN link_clicks c ON c.code = l.key || substr(l.suffixes, i, 1);
