-- carrierd +Message leg: one "-- name: x" block per statement, the time
-- always passed in. State changes go through apply_moves
-- (queries.sql); these are the leg's own reads and bookkeeping.

-- name: rcs_cached_capabilities
-- One bot's answers ($3) younger than the TTL ($2 = now - capability_ttl_s).
-- One primary key probe per number, whatever the statistics say
-- (queries.sql learned_carriers says why).
SELECT n.msisdn, c.capable
FROM unnest($1::text[]) AS n(msisdn)
CROSS JOIN LATERAL (SELECT capable FROM rcs_capabilities
                    WHERE bot_id = $3 AND msisdn = n.msisdn AND checked_at > $2
                    OFFSET 0) AS c;

-- name: rcs_store_capabilities
-- One bot's answers ($4). The caller passes each number once (ON CONFLICT
-- cannot touch a row twice). An older answer never overwrites a newer one
-- from another daemon.
INSERT INTO rcs_capabilities (bot_id, msisdn, capable, checked_at)
SELECT $4, n.* FROM unnest($1::text[], $2::boolean[], $3::timestamptz[]) AS n
ON CONFLICT (bot_id, msisdn) DO UPDATE
   SET capable = EXCLUDED.capable, checked_at = EXCLUDED.checked_at
 WHERE rcs_capabilities.checked_at <= EXCLUDED.checked_at;

-- name: rcs_purge_capabilities
DELETE FROM rcs_capabilities
WHERE (bot_id, msisdn) IN (SELECT bot_id, msisdn FROM rcs_capabilities
                           WHERE checked_at <= $1 ORDER BY checked_at LIMIT $2);

-- name: rcs_renew_leases
-- A batch still waiting on the platform keeps its claims ($3 = daemon id).
UPDATE messages SET lease_expires_at = $2
WHERE id = ANY($1::bigint[]) AND state = 'dispatching' AND lease_owner = $3;

-- name: rcs_claim_fallback_due
-- rcs_then_sms messages not delivered by their fallback time (§8). The
-- claim pushes fallback_at to $3 and commits before the revoke requests
-- leave: no row lock is held across HTTP, a daemon that dies mid-revoke
-- leaves the row due again at $3, and $3 is also the retry time after a
-- revoke error. Served by messages_fallback_due.
WITH due AS (
    SELECT id FROM messages
    WHERE state = 'rcs_sent' AND fallback_at <= $1
    ORDER BY fallback_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE messages m
   SET fallback_at = $3
  FROM due
 WHERE m.id = due.id
RETURNING m.id, m.account_id, m.channel, m.rcs_sent_at, m.accepted_at,
          -- A revoke already answered "already delivered": the grace for
          -- the delivered webhook is over, nothing is asked again.
          (SELECT max(e.at) FROM message_events e
            WHERE e.message_id = m.id AND e.kind = 'rcs_revoke_refused') AS refused_at;

-- name: rcs_claim_expiry_due
-- rcs_sent messages whose validity ended (§9: 72 h after the send for
-- channel rcs). Claimed like the fallback: expires_at moves to $3 while the
-- discard request is out, and is the retry time if it fails. Served by
-- messages_expiry_due.
WITH due AS (
    SELECT id FROM messages
    WHERE state = 'rcs_sent' AND expires_at <= $1
    ORDER BY expires_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE messages m
   SET expires_at = $3
  FROM due
 WHERE m.id = due.id
RETURNING m.id, m.account_id, m.channel, m.rcs_sent_at, m.accepted_at;

-- name: rcs_lock_messages
-- What a +Message status needs to settle the message, locked so that a
-- webhook and a timer (or two repeated webhooks) decide one after the other.
SELECT id, account_id, channel, leg, state, rcs_sent_at, rcs_units, msisdn, accepted_at
FROM messages WHERE id = ANY($1::bigint[])
ORDER BY id
FOR UPDATE;

-- name: rcs_store_early_status
INSERT INTO rcs_early_statuses (message_id, status, at, error, received_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (message_id, status) DO NOTHING;

-- name: rcs_take_early_statuses
DELETE FROM rcs_early_statuses WHERE message_id = ANY($1::bigint[])
RETURNING message_id, status, at, error;

-- name: rcs_purge_early_statuses
-- Statuses whose message never reached rcs_sent (it fell back or expired
-- while queued) are dropped after a while.
DELETE FROM rcs_early_statuses
WHERE (message_id, status) IN (SELECT message_id, status FROM rcs_early_statuses
                               WHERE received_at <= $1 ORDER BY received_at LIMIT $2);

-- name: rcs_reply_owner
-- The message a +Message reply answers, among the messages of the accounts
-- of the bot it came to ($3): the one it names (inReplyTo is our msgId),
-- else the latest +Message sent to the number.
SELECT id, account_id FROM (
    (SELECT id, account_id, 0 AS rank FROM messages
      WHERE id = $1 AND account_id = ANY($3::text[]))
    UNION ALL
    (SELECT id, account_id, 1 AS rank FROM messages
      WHERE msisdn = $2 AND rcs_sent_at IS NOT NULL AND account_id = ANY($3::text[])
      ORDER BY rcs_sent_at DESC LIMIT 1)
) AS candidates
ORDER BY rank
LIMIT 1;

-- name: rcs_insert_inbound
-- raw ->> 'msgId' is the platform's id of the reply: a repeated webhook
-- inserts nothing (inbound_rcs_platform_msg_id).
INSERT INTO inbound_messages (account_id, channel, msisdn, to_address, text, postback,
                              in_reply_to, received_at, raw)
VALUES ($1, 'rcs', $2, $3, $4, $5, $6, $7, $8::text::jsonb)
ON CONFLICT ((raw ->> 'msgId')) WHERE channel = 'rcs' DO NOTHING
RETURNING id;

-- name: rcs_hold_for_cancel
-- A sender's cancel of a +Message the platform may hold (rcs_sent, or
-- queued again after a send whose answer was lost) revokes it before moving
-- it. While that revoke is out, what would act on the message waits until
-- $3, like the timers' own claims: the fallback and expiry of an rcs_sent
-- one (they would revoke too, and start the SMS or expire it), the
-- dispatcher for a queued one (it would send it again). Nothing when the
-- message is no longer in the state $4 the cancel read.
-- (The row is in state $4 when it is updated at all, so $4 says which.)
UPDATE messages
   SET fallback_at = CASE WHEN $4::text = 'rcs_sent' AND fallback_at IS NOT NULL
                          THEN greatest(fallback_at, $3) ELSE fallback_at END,
       expires_at = CASE WHEN $4::text = 'rcs_sent' THEN greatest(expires_at, $3)
                         ELSE expires_at END,
       not_before = CASE WHEN $4::text = 'queued' THEN greatest(not_before, $3)
                         ELSE not_before END
 WHERE id = $1 AND account_id = $2 AND state = $4::text
RETURNING id;
