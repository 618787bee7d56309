-- A part and a history event are only ever written by the statement or the
-- transaction that writes their message (queries.sql, rcs.sql, the SQL-feed
-- function), and only the retention purge deletes messages, which now
-- deletes their parts and events itself. The foreign keys checked every
-- inserted row: an index probe and a lock on the message row, four times
-- per message, about 18 µs of PostgreSQL's time per message, for nothing
-- those writers do not already guarantee.
ALTER TABLE parts DROP CONSTRAINT parts_message_id_fkey;
ALTER TABLE message_events DROP CONSTRAINT message_events_message_id_fkey;
