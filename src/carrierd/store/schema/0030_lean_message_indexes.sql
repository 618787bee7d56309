-- Every state change of a message writes a new row version into each of its
-- indexes. Most messages carry no client_ref, yet the full unique index took
-- an entry for each version: a partial index keeps the idempotency guarantee
-- (intake names its predicate in ON CONFLICT) without that write.
ALTER TABLE messages DROP CONSTRAINT client_ref_unique;
CREATE UNIQUE INDEX messages_client_ref ON messages (account_id, client_ref)
    WHERE client_ref IS NOT NULL;
