-- carrierd: the reassigned-number check (DOMAIN §13). Same rules as
-- queries.sql: one "-- name: x" block per statement, the time passed in.

-- name: reassign_lock_held
-- Of a batch the gate judged, the messages still dispatching under this
-- daemon's lease ($2) with no verdict, locked for the transaction that
-- records the verdicts: a lookup that outlived its lease (a stalled daemon
-- whose rows another daemon recovered) decides nothing. In id order, like
-- every multi-message writer.
SELECT id FROM messages
WHERE id = ANY($1::bigint[]) AND state = 'dispatching' AND lease_owner = $2
  AND reassign_verdict IS NULL
ORDER BY id
FOR UPDATE;
