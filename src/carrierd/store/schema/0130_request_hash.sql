-- Idempotency by content: the SHA-256 of an HTTP intake item as intake
-- normalized it (intake.request_sha256). A later item with the same
-- client_ref and another hash is a conflict (409), not a retry. NULL for
-- rows from before this column and from the SQL feed, whose repeats are
-- taken as retries, as before.
ALTER TABLE messages ADD COLUMN request_sha256 bytea
    CHECK (request_sha256 IS NULL OR octet_length(request_sha256) = 32);
