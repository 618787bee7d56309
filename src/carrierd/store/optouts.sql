-- carrierd opt-out lists (DOMAIN §12): one "-- name: x" block per statement,
-- the time always passed in.

-- name: optouts_lock_account
-- Adds to one account's list are serialized, so that two at once cannot
-- both fit under the cap and together pass it.
SELECT pg_advisory_xact_lock(hashtextextended('carrierd.optouts:' || $1, 0));

-- name: optouts_count
SELECT count(*)::bigint FROM optouts WHERE account_id = $1;

-- name: optouts_new_numbers
-- Which of $2 (canonical, each once) are not yet on the list.
SELECT n.msisdn
FROM unnest($2::text[]) AS n(msisdn)
WHERE NOT EXISTS (SELECT 1 FROM optouts o WHERE o.account_id = $1 AND o.msisdn = n.msisdn);

-- name: optouts_insert
-- A number already on the list keeps when and how it was first added.
INSERT INTO optouts (account_id, msisdn, added_at, source)
SELECT $1, n.msisdn, $3, $4 FROM unnest($2::text[]) AS n(msisdn)
ON CONFLICT (account_id, msisdn) DO NOTHING;
