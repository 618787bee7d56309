-- carrierd status callbacks: the durable outbox of notifications to the
-- accounts' URLs. One "-- name: x" block per statement, the time passed in.

-- name: insert_status_callback
-- Called inside the transaction that changes the message's state.
INSERT INTO status_callbacks (message_id, account_id, url, payload, next_attempt_at, created_at)
VALUES ($1, $2, $3, $4::jsonb, $5, $5)
RETURNING id;

-- name: claim_status_callbacks
-- Take up to $3 due callbacks and lease them until $2: the lease is the new
-- next_attempt_at, so a sender that dies mid-POST leaves them due again.
WITH due AS (
    -- Oldest due first; SKIP LOCKED lets several daemons send side by side.
    SELECT id FROM status_callbacks
    WHERE state = 'pending' AND next_attempt_at <= $1
    ORDER BY next_attempt_at, id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE status_callbacks c
   SET attempts = c.attempts + 1, next_attempt_at = $2
  FROM due
 WHERE c.id = due.id
RETURNING c.id, c.message_id, c.message_id AS subject_id, c.account_id, c.url, c.payload,
          c.attempts, c.created_at;

-- name: record_status_callback_results
-- Outcomes of one batch of attempts. The attempts match fences off a sender
-- whose lease ran out while another one had already retried the row.
UPDATE status_callbacks c
   SET state = r.state,
       next_attempt_at = r.next_attempt_at,
       last_error = r.last_error,
       finished_at = CASE WHEN r.state = 'pending' THEN NULL ELSE $6::timestamptz END
  FROM unnest($1::bigint[], $2::int[], $3::text[], $4::timestamptz[], $5::text[])
       AS r(id, attempts, state, next_attempt_at, last_error)
 WHERE c.id = r.id AND c.attempts = r.attempts AND c.state = 'pending';
