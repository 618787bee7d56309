-- carrierd reports: billing, delivery-log export, retention.
-- Same rules as queries.sql: one "-- name: x" block per statement, the time
-- always passed in.

-- name: billing_for_month
-- The counts the engine keeps per account and JST month (DOMAIN §11), per
-- route (DOMAIN §6: SMS units by the route that carried them; '' for the
-- rest).
SELECT route,
       coalesce(sum(units) FILTER (WHERE channel = 'sms'), 0)::bigint AS sms_units,
       coalesce(sum(units) FILTER (WHERE channel = 'rcs'), 0)::bigint AS rcs_units,
       coalesce(sum(units) FILTER (WHERE channel = 'reassigned_check'), 0)::bigint
           AS reassigned_checks
FROM billing_counts
WHERE account_id = $1 AND month = $2
GROUP BY route
ORDER BY route;

-- name: billing_recomputed_from_messages
-- Audit: the same counts rebuilt from the messages themselves, attributing
-- a message's units to the JST month [$2, $3) in which it ended. Reassigned
-- number checks are not message rows and cannot be rebuilt here.
SELECT coalesce(sum(sms_units), 0)::bigint AS sms_units,
       coalesce(sum(rcs_units), 0)::bigint AS rcs_units
FROM messages
WHERE account_id = $1 AND final_at >= $2 AND final_at < $3;

-- name: export_messages_page
-- One page of an account's delivery log (DOMAIN §15) accepted in [$2, $3),
-- after the keyset ($4, $5) of the previous page's last row. The row
-- comparison walks messages_by_account_time_id without skipping or
-- repeating rows, however many share one accepted_at.
SELECT id, client_ref, channel, coalesce(msisdn, recipient_raw) AS msisdn, carrier, route,
       state,
       reason_code, reason_text, accepted_at, submitted_at, final_at, sms_parts, sms_units,
       rcs_units
FROM messages
WHERE account_id = $1
  AND accepted_at >= $2 AND accepted_at < $3
  AND (accepted_at, id) > ($4::timestamptz, $5::bigint)
ORDER BY accepted_at, id
LIMIT $6;

-- name: purge_final_messages
-- One bounded batch of retention: final messages that ended before $1,
-- with their parts and events (deleted here: no foreign key cascades to
-- them, see migration 0060) and callbacks (ON DELETE CASCADE). SKIP LOCKED:
-- two daemons purging at once share the work instead of waiting.
WITH doomed AS (
    SELECT id FROM messages
    WHERE final_at < $1
      AND state IN ('delivered', 'failed', 'expired', 'cancelled', 'skipped', 'rejected',
                    'unknown')
    ORDER BY final_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
),
parts_deleted AS (
    DELETE FROM parts p USING doomed WHERE p.message_id = doomed.id
),
events_deleted AS (
    DELETE FROM message_events e USING doomed WHERE e.message_id = doomed.id
),
-- The click log goes with the delivery log it belongs to (§12, §15).
link_clicks_deleted AS (
    DELETE FROM link_clicks c USING message_links l, doomed
    WHERE l.message_id = doomed.id AND c.code = l.code
),
links_deleted AS (
    DELETE FROM link_sets l USING doomed WHERE l.message_id = doomed.id RETURNING l.target_set
),
-- Their target URL sets count them down (schema 0210); a set none is left
-- of goes in purge_released_link_targets. Sorted by id, so that two
-- daemons purging messages of the same sets take them in one order; should
-- they deadlock all the same, one batch rolls back and is purged again.
targets_released AS (
    -- Never below 0: a count gone wrong must not stop retention.
    UPDATE link_targets t SET links_left = greatest(t.links_left - gone.links, 0)
    FROM (SELECT target_set, count(*)::int AS links FROM links_deleted
          WHERE target_set IS NOT NULL GROUP BY target_set ORDER BY target_set) AS gone
    WHERE t.id = gone.target_set
),
opens_deleted AS (
    DELETE FROM message_opens o USING doomed WHERE o.message_id = doomed.id
),
-- A recipient's own auto-reply, its variables substituted: personal data,
-- deleted with the message it was stored for (schema 0200).
auto_replies_deleted AS (
    DELETE FROM send_auto_replies a USING doomed WHERE a.message_id = doomed.id
),
deleted AS (
    DELETE FROM messages m USING doomed WHERE m.id = doomed.id RETURNING 1
)
SELECT count(*)::int FROM deleted;

-- name: purge_released_link_targets
-- One bounded batch of target URL sets that no link row names any more
-- (purge_final_messages counted the last of them down) and that were
-- stored before $1; returns how many went.
WITH doomed AS (
    SELECT id FROM link_targets
    WHERE links_left = 0 AND created_at < $1
    LIMIT $2
    FOR UPDATE SKIP LOCKED
),
deleted AS (
    DELETE FROM link_targets t USING doomed d WHERE t.id = d.id RETURNING 1
)
SELECT count(*)::int FROM deleted;

-- name: purge_au_gate
-- One bounded batch of au gate rows whose spacing ran out before $1
-- (domain/au_gate.au_gate_forgets_before); SKIP LOCKED as above.
WITH doomed AS (
    SELECT msisdn FROM au_gate
    WHERE last_final_at < $1
    LIMIT $2
    FOR UPDATE SKIP LOCKED
),
deleted AS (
    DELETE FROM au_gate g USING doomed d
    WHERE g.msisdn = d.msisdn AND g.last_final_at < $1
    RETURNING 1
)
SELECT count(*)::int FROM deleted;
