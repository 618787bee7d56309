-- DOMAIN §12: a message's target URLs are stored once per set, not on
-- every message's row. A campaign sends one set of URLs to every recipient
-- of a batch; held on each row, the set (some 200 bytes for five URLs) was
-- most of the row and a third of what writing the row cost PostgreSQL.
--
-- A set is written by the intake statement that mints its links (store/
-- links.sql insert_message_links), one row per distinct set of the batch,
-- with `links_left` the number of link rows that name it. Retention counts
-- it down as it deletes those rows with their messages (reports.sql
-- purge_final_messages) and deletes the set once none is left
-- (purge_released_link_targets): target URLs can hold a recipient's own
-- parameters, and go with the last message that was sent them.
--
-- No foreign key from link_sets: its check would cost every link row a
-- lookup at intake. The one statement that writes both keeps them together.
CREATE SEQUENCE link_targets_id_seq AS bigint;
CREATE TABLE link_targets (
    id          bigint PRIMARY KEY DEFAULT nextval('link_targets_id_seq'),
    target_urls text[] NOT NULL CHECK (cardinality(target_urls) BETWEEN 1 AND 5),
    links_left  integer NOT NULL CHECK (links_left >= 0),
    created_at  timestamptz NOT NULL
);
ALTER SEQUENCE link_targets_id_seq OWNED BY link_targets.id;
CREATE INDEX link_targets_released ON link_targets (id) WHERE links_left = 0;

-- The rows whose key is a whole code (before 0190), by their code less its
-- last character: what a new key must not be with one of its suffixes
-- (store/links.sql insert_message_links), one probe per message rather
-- than one per link.
DROP INDEX link_sets_whole_codes;
CREATE INDEX link_sets_whole_codes ON link_sets (left(key, -1)) WHERE suffixes = '';

-- Rows written before this migration keep their URLs on the row.
ALTER TABLE link_sets ADD COLUMN target_set bigint;
ALTER TABLE link_sets DROP CONSTRAINT link_sets_check;
ALTER TABLE link_sets ADD CONSTRAINT link_sets_targets
    CHECK ((kind = 'link') = (target_urls IS NOT NULL OR target_set IS NOT NULL)
           AND (target_urls IS NULL OR target_set IS NULL));
ALTER TABLE link_sets DROP CONSTRAINT link_sets_check2;
ALTER TABLE link_sets ADD CONSTRAINT link_sets_suffixes
    CHECK (suffixes = '' OR target_set IS NOT NULL
           OR length(suffixes) = coalesce(cardinality(target_urls), 1));

CREATE OR REPLACE VIEW message_links AS
SELECT l.key || substr(l.suffixes, i, 1) AS code,
       l.message_id,
       l.kind,
       (l.first_link_no + i - 1)::smallint AS link_no,
       (coalesce(l.target_urls, t.target_urls))[i] AS target_url,
       l.account_id,
       l.msisdn,
       l.created_at,
       l.expires_at,
       coalesce(c.clicks, 0) AS clicks,
       c.first_click_at,
       c.last_click_at,
       l.confirmed_at
FROM link_sets l
LEFT JOIN link_targets t ON t.id = l.target_set
CROSS JOIN LATERAL generate_series(1, greatest(length(l.suffixes), 1)) AS i
LEFT JOIN link_clicks c ON c.code = l.key || substr(l.suffixes, i, 1);
