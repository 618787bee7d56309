-- carrierd: the reassigned-number check (DOMAIN §13). Same rules as
-- queries.sql: one "-- name: x" block per statement, the time passed in.

-- name: reassign_lock_held
-- Of a batch the gate judged, the messages still dispatching under this
-- daemon's lease ($2) with no verdict, locked for the transaction that
-- records the verdicts: a lookup that outlived its lease (a stalled daemon
-- whose rows another daemon recovered) decides nothing. In id order, like
-- every multi-message writer: each row is probed by its key and locked in
-- the order of the sorted ids.
-- The state is compared through coalesce so that no index on it can serve:
-- statistics taken while few messages were dispatching make the partial
-- indexes on state look cheapest, and each call then read every message
-- the gate held (10 ms for a batch of 100 with 5,000 held).
SELECT m.id
FROM (SELECT DISTINCT id FROM unnest($1::bigint[]) AS u(id) ORDER BY id) AS i
CROSS JOIN LATERAL (SELECT id FROM messages
                    WHERE id = i.id AND coalesce(state, '') = 'dispatching'
                      AND lease_owner = $2 AND reassign_verdict IS NULL
                    FOR UPDATE) AS m
ORDER BY m.id;
