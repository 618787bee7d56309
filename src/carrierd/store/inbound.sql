-- Replies: SMS MO and +Message replies (engine/inbound.py). One
-- "-- name: x" block per statement, the time passed in.

-- name: inbound_sms_first_seen
-- The MO keys ($1, sorted by the caller so that concurrent flushes lock them
-- in one order) not seen since $3: a key seen before that is a new MO with
-- the same bytes, not a repeated delivery. Returns the keys that are new.
INSERT INTO inbound_sms_seen AS s (mo_key, seen_at)
SELECT k, $2::timestamptz FROM unnest($1::bytea[]) AS k
ON CONFLICT (mo_key) DO UPDATE SET seen_at = EXCLUDED.seen_at
    WHERE s.seen_at < $3
RETURNING mo_key;

-- name: inbound_sms_purge_seen
DELETE FROM inbound_sms_seen
WHERE mo_key IN (SELECT mo_key FROM inbound_sms_seen WHERE seen_at < $1
                 ORDER BY seen_at LIMIT $2);

-- name: inbound_sms_add_part
-- A part, and the message it belongs to (its deadline set by the first
-- part). A part already here (delivered twice, past the duplicate window)
-- is kept as it first came. The part's foreign key is checked at the end of
-- the statement, when the message row exists.
WITH opened AS (
    INSERT INTO inbound_sms_reassembly (carrier, msisdn, to_address, reference, total,
                                        first_at, deadline_at)
    VALUES ($1, $2, $3, $4, $5, $10, $11)
    ON CONFLICT DO NOTHING
)
INSERT INTO inbound_sms_parts (carrier, msisdn, to_address, reference, total, seq,
                               data_coding, udh_octets, payload, received_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT DO NOTHING;

-- name: inbound_sms_lock_reassembly
-- Serializes the parts of one message across flushes and daemons: whoever
-- holds this row counts the parts committed before it, its own included.
SELECT first_at FROM inbound_sms_reassembly
WHERE carrier = $1 AND msisdn = $2 AND to_address = $3 AND reference = $4 AND total = $5
FOR UPDATE;

-- name: inbound_sms_parts_of
SELECT seq, data_coding, udh_octets, payload, received_at FROM inbound_sms_parts
WHERE carrier = $1 AND msisdn = $2 AND to_address = $3 AND reference = $4 AND total = $5
ORDER BY seq;

-- name: inbound_sms_close_reassembly
-- Its parts go with it (ON DELETE CASCADE).
DELETE FROM inbound_sms_reassembly
WHERE carrier = $1 AND msisdn = $2 AND to_address = $3 AND reference = $4 AND total = $5;

-- name: inbound_sms_claim_overdue
-- Messages whose parts did not all come by their deadline; a row another
-- pass (or a flush adding its last part) holds is left to it.
SELECT carrier, msisdn, to_address, reference, total, first_at FROM inbound_sms_reassembly
WHERE deadline_at <= $1
ORDER BY deadline_at
LIMIT $2
FOR UPDATE SKIP LOCKED;

-- name: inbound_answered
-- The message a reply answers and so the account it belongs to, among the
-- accounts the reply could be for ($3): the message it names ($1, a
-- +Message inReplyTo), else the latest SMS accepted by an SMSC or +Message
-- sent to the number ($2) since $4. An SMS the SMSC took moments ago may
-- still be 'sending' without its submitted_at (the receipt grace of
-- engine/write_behind.py): the open ones count too (messages_open_by_msisdn).
SELECT id, account_id FROM (
    (SELECT id, account_id, 0 AS rank, NULL::timestamptz AS sent_at FROM messages
      WHERE id = $1 AND account_id = ANY($3::text[]))
    UNION ALL
    (SELECT id, account_id, 1, submitted_at FROM messages
      WHERE msisdn = $2 AND submitted_at IS NOT NULL AND submitted_at >= $4
        AND account_id = ANY($3::text[])
      ORDER BY submitted_at DESC LIMIT 1)
    UNION ALL
    (SELECT id, account_id, 1, rcs_sent_at FROM messages
      WHERE msisdn = $2 AND rcs_sent_at IS NOT NULL AND rcs_sent_at >= $4
        AND account_id = ANY($3::text[])
      ORDER BY rcs_sent_at DESC LIMIT 1)
    UNION ALL
    (SELECT id, account_id, 1, updated_at FROM messages
      WHERE msisdn = $2 AND state IN ('sending', 'submitted') AND updated_at >= $4
        AND account_id = ANY($3::text[])
      ORDER BY id DESC LIMIT 1)
) AS candidates
ORDER BY rank, sent_at DESC, id DESC
LIMIT 1;

-- name: inbound_insert
-- raw ->> 'msgId' is a +Message reply's platform id: a repeated webhook
-- inserts nothing (inbound_rcs_platform_msg_id of 0020). send_id: the send
-- (案件) of the answered message ($8), when it belongs to one.
INSERT INTO inbound_messages (account_id, channel, carrier, msisdn, to_address, text, postback,
                              in_reply_to, received_at, raw, kind, incomplete, parts_expected,
                              parts_received, data_coding, text_undecodable, raw_hex, send_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::text::jsonb, $11, $12, $13, $14, $15, $16, $17,
        (SELECT m.send_id FROM messages m WHERE m.id = $8::bigint))
ON CONFLICT ((raw ->> 'msgId')) WHERE channel = 'rcs' DO NOTHING
RETURNING id, account_id, channel, carrier, msisdn, to_address, text, postback, kind,
          in_reply_to, send_id, received_at, incomplete, parts_expected, parts_received,
          data_coding, text_undecodable, raw_hex, keyword;

-- name: inbound_note_keyword
UPDATE inbound_messages SET keyword = $2 WHERE id = $1;

-- name: inbound_search
-- GET /v1/inbound: newest first, keyed on (received_at, id); each filter
-- NULL when not given. $8/$9: the cursor (the last row of the page before).
SELECT id, account_id, channel, carrier, msisdn, to_address, text, postback, kind, in_reply_to,
       send_id, received_at, incomplete, parts_expected, parts_received, data_coding,
       text_undecodable, raw_hex, keyword
FROM inbound_messages
WHERE account_id = $1
  AND ($2::timestamptz IS NULL OR received_at >= $2)
  AND ($3::timestamptz IS NULL OR received_at < $3)
  AND ($4::text IS NULL OR msisdn = $4)
  AND ($5::bigint IS NULL OR in_reply_to = $5)
  AND ($6::bigint IS NULL OR send_id = $6)
  AND ($8::timestamptz IS NULL OR (received_at, id) < ($8, $9::bigint))
ORDER BY received_at DESC, id DESC
LIMIT $7;

-- name: inbound_enqueue_push
INSERT INTO inbound_callbacks (inbound_id, account_id, msisdn, url, payload, next_attempt_at,
                               created_at)
VALUES ($1, $2, $3, $4, $5::text::jsonb, $6, $6)
RETURNING id;

-- name: claim_inbound_callbacks
-- Like claim_status_callbacks, but only the first pending push of each
-- account and number: the ones behind it wait until it is sent or given up,
-- so a number's replies reach the receiver in the order they came. A
-- leased head is still pending, so nothing overtakes it while it is out.
WITH due AS (
    SELECT c.id FROM inbound_callbacks c
    WHERE c.state = 'pending' AND c.next_attempt_at <= $1
      AND NOT EXISTS (SELECT 1 FROM inbound_callbacks e
                      WHERE e.state = 'pending' AND e.account_id = c.account_id
                        AND e.msisdn = c.msisdn AND e.id < c.id)
    ORDER BY c.next_attempt_at, c.id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE inbound_callbacks c
   SET attempts = c.attempts + 1, next_attempt_at = $2
  FROM due
 WHERE c.id = due.id
RETURNING c.id, c.inbound_id AS subject_id, c.account_id, c.url, c.payload, c.attempts,
          c.created_at;

-- name: record_inbound_callback_results
UPDATE inbound_callbacks c
   SET state = r.state,
       next_attempt_at = r.next_attempt_at,
       last_error = r.last_error,
       finished_at = CASE WHEN r.state = 'pending' THEN NULL ELSE $6::timestamptz END
  FROM unnest($1::bigint[], $2::int[], $3::text[], $4::timestamptz[], $5::text[])
       AS r(id, attempts, state, next_attempt_at, last_error)
 WHERE c.id = r.id AND c.attempts = r.attempts AND c.state = 'pending';

-- name: purge_inbound_messages
-- Replies received before $1, at most $2 per statement, with their pushes
-- (ON DELETE CASCADE); returns how many went.
WITH old AS (
    SELECT id FROM inbound_messages
     WHERE received_at < $1
     ORDER BY received_at
     LIMIT $2
       FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM inbound_messages i USING old WHERE i.id = old.id
    RETURNING 1
)
SELECT count(*) FROM gone;
