-- A part is written three times: inserted pending, its response (which sets
-- the indexed smsc_message_id), then its receipt, which changes no indexed
-- column and can be a heap-only update if its page has room. Full pages
-- made a third of receipt updates insert into both indexes of parts. New
-- pages keep a fifth free for them.
ALTER TABLE parts SET (fillfactor = 80);
