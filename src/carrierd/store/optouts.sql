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

-- name: optouts_remove
DELETE FROM optouts WHERE account_id = $1 AND msisdn = $2 RETURNING msisdn;

-- name: optouts_get
SELECT msisdn, added_at, source FROM optouts WHERE account_id = $1 AND msisdn = $2;

-- name: optouts_page
-- One page of the list in the order numbers were added, after the cursor
-- ($2, $3: the last row of the previous page; NULL: from the start).
-- Served by optouts_by_added.
SELECT msisdn, added_at, source FROM optouts
WHERE account_id = $1
  AND ($2::timestamptz IS NULL OR (added_at, msisdn) > ($2, $3::text))
ORDER BY added_at, msisdn
LIMIT $4;

-- name: record_optout_verdicts
-- DOMAIN §12: read the list for these messages and record the verdict
-- (domain/gates.py says when). A scheduled send's check counts only the
-- numbers added by its due time (optout_check_at), so a check that runs
-- late reads the list it was due to read; the others read it as of $2.
-- The timer is cleared with it: a message's list is read once.
UPDATE messages m
   SET opted_out = EXISTS (
           SELECT 1 FROM optouts o
            WHERE o.account_id = m.account_id AND o.msisdn = m.msisdn
              AND o.added_at <= coalesce(m.optout_check_at, $2)),
       optout_check_at = NULL
 WHERE m.id = ANY($1::bigint[])
RETURNING m.id, m.state, m.opted_out;

-- name: due_optout_checks
-- Scheduled sends whose opt-out check is due (messages_optout_check_due):
-- once its instant has passed, so that a number added at that very
-- instant is on the list it reads, whichever commits first.
SELECT id FROM messages WHERE optout_check_at < $1
ORDER BY optout_check_at LIMIT $2 FOR UPDATE SKIP LOCKED;
