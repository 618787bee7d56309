-- name: record_webhook_event
-- true the first time a webhook body is seen, NULL for a replay.
INSERT INTO webhook_events (event_key, received_at)
VALUES ($1, $2)
ON CONFLICT (event_key) DO NOTHING
RETURNING true;

-- name: purge_webhook_events
-- Keys older than $1, at most $2 per statement (one short transaction
-- each); returns how many went.
WITH old AS (
    SELECT event_key FROM webhook_events
     WHERE received_at < $1
     ORDER BY received_at
     LIMIT $2
       FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM webhook_events w USING old WHERE w.event_key = old.event_key
    RETURNING 1
)
SELECT count(*) FROM gone;
