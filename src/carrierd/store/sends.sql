-- carrierd sends (案件, DOMAIN §14): one content to many recipients.
-- Same rules as queries.sql: one "-- name: x" block per statement, the time
-- always passed in.

-- name: waiting_follow_ups
-- The follow-ups still waiting for these messages (engine/lifecycle.py, in
-- the transaction that ended them), locked for the move that releases or
-- skips them. Served by messages_follow_ups_waiting, which holds only
-- follow-ups in 'scheduled'; one already released (with a delay) is there
-- too, but has a time.
SELECT f.id, f.after_message_id, s.follow_up_delay_s AS delay_s,
       s.follow_up_validity_s AS validity_s
FROM messages f
JOIN sends s ON s.id = f.send_id
WHERE f.after_message_id = ANY($1::bigint[])
  AND f.state = 'scheduled' AND f.after_message_id IS NOT NULL
  AND f.not_before = 'infinity'
ORDER BY f.id
FOR UPDATE OF f;

-- name: create_send
-- A client_ref the account used before creates nothing: the caller reads
-- that send (a retry resumes or answers it; other content is a conflict).
INSERT INTO sends (account_id, client_ref, request_sha256, state, channel, spec, group_id,
                   follow_up_delay_s, follow_up_validity_s, created_at)
VALUES ($1, $2, $3, 'registering', $4, $5::jsonb, $6, $7, $8, $9)
ON CONFLICT (account_id, client_ref) WHERE client_ref IS NOT NULL DO NOTHING
RETURNING id;

-- name: get_send
SELECT id, account_id, client_ref, request_sha256, state, channel, spec, group_id,
       follow_up_delay_s, rows_done, accepted, rejected, first_message_id, last_message_id,
       created_at, registered_at, cancelled_at
FROM sends
WHERE id = $1 AND account_id = $2;

-- name: get_send_by_client_ref
SELECT id, request_sha256, state FROM sends WHERE account_id = $1 AND client_ref = $2;

-- name: list_sends
-- GET /v1/sends: newest first, keyset on id (sends_by_account).
SELECT id, account_id, client_ref, request_sha256, state, channel, spec, group_id,
       follow_up_delay_s, rows_done, accepted, rejected, first_message_id, last_message_id,
       created_at, registered_at, cancelled_at
FROM sends
WHERE account_id = $1 AND ($2::bigint IS NULL OR id < $2)
ORDER BY id DESC
LIMIT $3;

-- name: lock_send
-- A batch of recipients is registered under the send's row lock: two POSTs
-- resuming one send take turns, each inserting only the rows past the
-- other's, and a cancel (which takes the lock too) is seen by every batch
-- after it.
SELECT state, rows_done FROM sends WHERE id = $1 FOR UPDATE;

-- name: insert_send_messages
-- One statement per batch of a send: its messages, follow-ups included
-- (a follow-up's NULL not_before: 'infinity', waiting for its first
-- message), and their 'accepted' events. The recipient gates as intake's
-- insert_messages stores them: a send that reads its opt-out list at
-- registration (domain/gates.py) reads it here.
WITH input AS (
    SELECT *
    FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                $8::text[], $9::int[], $10::text[], $11::text[], $12::text[], $13::text[],
                $14::boolean[], $15::timestamptz[], $16::timestamptz[], $17::timestamptz[],
                $18::int[], $19::boolean[], $20::timestamptz[], $21::date[], $22::bigint[])
         AS t(id, channel, state, recipient_raw, msisdn, sms_text, sms_encoding, sms_parts,
              rcs_content, carrier_named, carriers_allowed, callback_url,
              callback_every_change, send_at, not_before, expires_at, send_row,
              skip_opted_out, optout_check_at, reassign_base_date, after_message_id)
),
inserted AS (
    INSERT INTO messages (
        id, account_id, channel, leg, state, recipient_raw, msisdn, validated,
        sms_text, sms_encoding, sms_parts, rcs_content, carrier_named, carriers_allowed,
        callback_url, callback_every_change, send_at, not_before, expires_at,
        accepted_at, updated_at, send_id, send_row, after_message_id,
        skip_opted_out, optout_check_at, opted_out, reassign_base_date)
    OVERRIDING SYSTEM VALUE
    SELECT id, $1, channel, CASE WHEN channel = 'sms' THEN 'sms' ELSE 'rcs' END,
           state, recipient_raw, msisdn, true, sms_text, sms_encoding, sms_parts,
           rcs_content::jsonb, carrier_named,
           CASE WHEN carriers_allowed IS NULL THEN NULL
                ELSE string_to_array(carriers_allowed, ',') END,
           callback_url, callback_every_change, send_at,
           coalesce(not_before, 'infinity'), coalesce(expires_at, 'infinity'),
           $23, $23, $24, send_row, after_message_id,
           coalesce(skip_opted_out, false), optout_check_at,
           CASE WHEN skip_opted_out AND optout_check_at IS NULL
                THEN EXISTS (SELECT 1 FROM optouts o
                              WHERE o.account_id = $1 AND o.msisdn = input.msisdn) END,
           reassign_base_date
    FROM input
    RETURNING id, state, after_message_id
)
INSERT INTO message_events (message_id, at, kind, state, detail)
SELECT id, $23, 'accepted', state,
       jsonb_build_object('source', 'send', 'send_id', $24::text)
       || CASE WHEN after_message_id IS NULL THEN '{}'::jsonb
               ELSE jsonb_build_object('after_message_id', after_message_id::text) END
FROM inserted;

-- name: insert_send_rejections
INSERT INTO send_rejections (send_id, row_no, field, reason)
SELECT $1, * FROM unnest($2::int[], $3::text[], $4::text[])
ON CONFLICT (send_id, row_no) DO NOTHING;

-- name: record_send_batch
-- In the batch's transaction: the rows read so far ($2, the high-water
-- mark a resumed registration starts from) and the range of message ids.
UPDATE sends
   SET rows_done = $2, accepted = accepted + $3, rejected = rejected + $4,
       first_message_id = least(first_message_id, $5),
       last_message_id = greatest(last_message_id, $6)
 WHERE id = $1;

-- name: finish_send
UPDATE sends SET state = 'registered', registered_at = $2
WHERE id = $1 AND state = 'registering';

-- name: send_rejections
SELECT row_no, field, reason FROM send_rejections
WHERE send_id = $1
ORDER BY row_no
LIMIT $2;

-- name: send_state_counts
-- A send's messages by state, first messages and follow-ups apart, with
-- their billing units. The primary key over the send's id range finds
-- them (other intake may have interleaved ids: send_id filters those).
SELECT after_message_id IS NOT NULL AS follow_up, state, count(*)::int AS n,
       coalesce(sum(sms_units), 0)::bigint AS sms_units,
       coalesce(sum(rcs_units), 0)::bigint AS rcs_units
FROM messages
WHERE id BETWEEN $2 AND $3 AND send_id = $1
GROUP BY 1, 2;

-- name: send_replies
-- Replies to the send (inbound_messages.send_id: the send of the message a
-- reply answers, its auto-replies included).
SELECT count(*)::int AS replies, count(DISTINCT msisdn)::int AS repliers
FROM inbound_messages
WHERE send_id = $1;

-- name: send_messages_page
-- One page of a send's messages in id order, after the cursor's id $4.
SELECT id, account_id, client_ref, channel, leg, state, reason_code, reason_text,
       recipient_raw, msisdn, sms_parts, carrier, route, carriers_wrong, attempt, send_at,
       expires_at, accepted_at, submitted_at, rcs_sent_at, final_at, updated_at,
       sms_units, rcs_units, send_row, after_message_id
FROM messages
WHERE id BETWEEN greatest($2::bigint, $4::bigint + 1) AND $3 AND send_id = $1
ORDER BY id
LIMIT $5;

-- name: send_export_page
-- The delivery-log export (http/reports.py's columns) of a send's messages.
SELECT id, client_ref, channel, coalesce(msisdn, recipient_raw) AS msisdn, carrier, route,
       state, reason_code, reason_text, accepted_at, submitted_at, final_at, sms_parts,
       sms_units, rcs_units
FROM messages
WHERE id BETWEEN greatest($2::bigint, $4::bigint + 1) AND $3 AND send_id = $1
ORDER BY id
LIMIT $5;

-- name: mark_send_cancelled
-- Waits for a batch being registered (lock_send): every batch after this
-- sees the send cancelled and registers nothing.
UPDATE sends SET state = 'cancelled', cancelled_at = coalesce(cancelled_at, $3)
WHERE id = $1 AND account_id = $2
RETURNING first_message_id, last_message_id;

-- name: send_open_messages
-- The send's messages not final yet, a page at a time in id order.
SELECT id, state, leg
FROM messages
WHERE id BETWEEN greatest($2::bigint, $4::bigint + 1) AND $3 AND send_id = $1
  AND state IN ('scheduled', 'queued', 'dispatching', 'sending', 'submitted', 'rcs_sent')
ORDER BY id
LIMIT $5;

-- name: messages_for_cancel
SELECT id, state, leg FROM messages
WHERE id = ANY($1::bigint[]) AND account_id = $2;

-- name: get_group
SELECT id, account_id, name, bot_id, size, fetched_at FROM subscriber_groups
WHERE id = $1 AND account_id = $2;

-- name: group_members_page
-- A page of a group's numbers in order, after $3 (keyset on the key).
SELECT g.msisdn
FROM subscriber_group_members g
JOIN subscriber_groups s ON s.id = g.group_id
WHERE g.group_id = $1 AND s.account_id = $2 AND g.msisdn > $3
ORDER BY g.msisdn
LIMIT $4;

-- name: send_reply_context
-- What an answer to message $1 of a send needs (engine/send_replies.py):
-- the send's spec (choices, auto-reply, validity), when the send's message
-- to this recipient left (the later of its SMS and +Message sending; its
-- acceptance if neither is known: the reply validity runs from it, whether
-- the answer names that message, its follow-up or an auto-reply) and the
-- answered message's +Message content (a tapped suggestion's own validity).
-- own: the recipient's own auto-reply contents (send_auto_replies), if any.
SELECT s.id AS send_id, s.spec, s.state AS send_state, m.rcs_content,
       coalesce(greatest(o.submitted_at, o.rcs_sent_at), o.accepted_at, m.accepted_at)
           AS sent_at,
       (SELECT a.contents FROM send_auto_replies a WHERE a.message_id = o.id) AS own
FROM messages m
JOIN sends s ON s.id = m.send_id
LEFT JOIN LATERAL (
    -- The answered message itself, or the first message of a follow-up:
    -- by primary key.
    (SELECT id, submitted_at, rcs_sent_at, accepted_at FROM messages o
      WHERE o.id = CASE WHEN m.after_message_id IS NOT NULL THEN m.after_message_id
                        WHEN m.id BETWEEN s.first_message_id AND s.last_message_id THEN m.id
                   END)
    UNION ALL
    -- An auto-reply (past the send's range): the recipient's message, by
    -- number within the range.
    (SELECT id, submitted_at, rcs_sent_at, accepted_at FROM messages o
      WHERE m.after_message_id IS NULL
        AND m.id NOT BETWEEN s.first_message_id AND s.last_message_id
        AND o.msisdn = m.msisdn AND o.send_id = s.id AND o.after_message_id IS NULL
        AND o.id BETWEEN s.first_message_id AND s.last_message_id
      ORDER BY o.id
      LIMIT 1)
    LIMIT 1
) o ON true
WHERE m.id = $1;

-- name: mark_auto_reply
-- An auto-reply belongs to its send: an answer to it is an answer to the
-- send (inbound_insert takes the answered message's send_id). Its id is
-- past the send's range, so the send's counts and pages leave it out.
UPDATE messages SET send_id = $2 WHERE id = $1 AND send_id IS NULL;

-- name: inbound_set_choice
UPDATE inbound_messages SET choice = $2 WHERE id = $1;

-- name: send_choice_tally
-- The survey tally of send $1: per recipient, their latest reply that
-- matched a choice (a recipient who answers again is counted once, for
-- their last answer), counted per choice.
SELECT choice, count(*)::int AS n
FROM (SELECT DISTINCT ON (msisdn) msisdn, choice
      FROM inbound_messages
      WHERE send_id = $1 AND choice IS NOT NULL
      ORDER BY msisdn, received_at DESC, id DESC) AS latest
GROUP BY choice;

-- name: send_unmatched_replies
-- Replies to send $1 that matched no choice (kept and listed all the same).
SELECT count(*)::int AS replies, count(DISTINCT msisdn)::int AS repliers
FROM inbound_messages
WHERE send_id = $1 AND choice IS NULL;

-- name: send_replies_page
-- GET /v1/sends/{id}/replies: the send's replies oldest first, after the
-- cursor's id $2.
SELECT id, account_id, channel, carrier, msisdn, to_address, text, postback, kind, in_reply_to,
       send_id, received_at, incomplete, parts_expected, parts_received, data_coding,
       text_undecodable, raw_hex, keyword, choice
FROM inbound_messages
WHERE send_id = $1 AND id > $2
ORDER BY id
LIMIT $3;

-- name: insert_send_auto_replies
INSERT INTO send_auto_replies (message_id, contents)
SELECT id, contents::jsonb FROM unnest($1::bigint[], $2::text[]) AS t(id, contents)
ON CONFLICT (message_id) DO NOTHING;
