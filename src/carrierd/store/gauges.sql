-- carrierd gauges: what the metrics loop reads every few seconds. Same rules
-- as queries.sql: one "-- name: x" block per statement, the time always
-- passed in. Every daemon on a database reads the same numbers: dashboards
-- take max() across instances.

-- name: queue_gauges
-- Open messages per state and account, and how long the oldest has waited
-- at $1: since acceptance, or since its send time for a scheduled send (a
-- send still in the future has waited 0 s). greatest() ignores NULLs.
SELECT state, account_id, count(*)::bigint AS depth,
       greatest(0, extract(epoch FROM $1::timestamptz - min(greatest(accepted_at, send_at))))
           ::float8 AS oldest_age_s
FROM messages
WHERE state IN ('scheduled', 'queued', 'dispatching', 'sending', 'submitted', 'rcs_sent')
GROUP BY state, account_id;

-- name: au_gate_held
-- au numbers still inside the spacing ($2 seconds) after their last final
-- receipt at $1: the next SMS to any of them would be held back.
SELECT count(*)::bigint
FROM au_gate
WHERE last_final_at > $1::timestamptz - make_interval(secs => $2::float8);

-- name: rate_bucket_levels
-- Every account's stored bucket, as of its own updated_at; the refill up
-- to now is projected in Python with the account's configured rate.
SELECT account_id, tokens, updated_at FROM rate_buckets;

-- name: callback_backlog
-- Status callbacks not yet delivered, and how long the oldest has waited at
-- $1 (0 with none). The partial index on pending rows keeps this to the
-- backlog itself, however many sent callbacks the table keeps.
SELECT count(*)::bigint AS pending,
       coalesce(greatest(0, extract(epoch FROM $1::timestamptz - min(created_at))), 0)
           ::float8 AS oldest_age_s
FROM status_callbacks
WHERE state = 'pending';
