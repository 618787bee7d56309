-- carrierd: the reassigned-number check (DOMAIN §13). Same rules as
-- queries.sql: one "-- name: x" block per statement, the time passed in.

-- name: reassign_store_base_dates
-- Intake: the base dates of the messages that ask for the check, in the
-- transaction that inserted them (only messages inserted by it: an
-- idempotent retry leaves the existing message as it is). Only a batch
-- with such messages runs this.
UPDATE messages m SET reassign_base_date = i.base_date
  FROM unnest($1::bigint[], $2::date[]) AS i(id, base_date)
 WHERE m.id = i.id;

-- name: reassign_record_verdicts
-- The verdicts of messages whose move the lifecycle writer just applied,
-- in its transaction: a message queued again on no_history is sent on by
-- its next claim without a second lookup (dispatcher), whatever daemon
-- claims it.
UPDATE messages m SET reassign_verdict = i.verdict, reassign_data_month = i.data_month
  FROM unnest($1::bigint[], $2::text[], $3::text[]) AS i(id, verdict, data_month)
 WHERE m.id = i.id;

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
