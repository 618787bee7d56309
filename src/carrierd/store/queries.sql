-- carrierd: every DML statement, one named block each ("-- name: x").
-- The time is always passed in ($now): no business statement reads now(),
-- so tests control the clock and every daemon agrees on what it wrote.

-- name: upsert_account
INSERT INTO accounts (account_id, allow_m2m, max_sms_chars)
VALUES ($1, $2, $3)
ON CONFLICT (account_id) DO UPDATE
   SET allow_m2m = EXCLUDED.allow_m2m, max_sms_chars = EXCLUDED.max_sms_chars;

-- name: replace_account_tokens
WITH gone AS (
    DELETE FROM api_tokens WHERE account_id = $1 AND NOT (token_sha256 = ANY($2::bytea[]))
)
INSERT INTO api_tokens (token_sha256, account_id)
SELECT t, $1 FROM unnest($2::bytea[]) AS t
ON CONFLICT (token_sha256) DO UPDATE SET account_id = EXCLUDED.account_id;

-- name: reserve_message_ids
-- Ids are reserved before the batch insert so that each accepted item of a
-- request maps to its row without relying on RETURNING order.
SELECT nextval(pg_get_serial_sequence('messages', 'id')) AS id
FROM generate_series(1, $1::int);

-- name: insert_messages
-- One statement per intake batch: the rows and their 'accepted' events.
-- A client_ref already taken by the account inserts nothing (idempotency);
-- the caller then reads the existing id with find_by_client_refs.
WITH input AS (
    SELECT *
    FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                $8::text[], $9::text[], $10::int[], $11::text[], $12::text[], $13::text[],
                $14::text[], $15::boolean[], $16::timestamptz[], $17::timestamptz[],
                $18::timestamptz[])
         AS t(id, client_ref, channel, state, recipient_raw, msisdn, sms_text, sms_encoding,
              sms_parts, rcs_content, carrier_named, carriers_allowed, callback_url,
              callback_every_change, send_at, not_before, expires_at)
),
inserted AS (
    INSERT INTO messages (
        id, account_id, client_ref, channel, leg, state, recipient_raw, msisdn, validated,
        sms_text, sms_encoding, sms_parts, rcs_content, carrier_named, carriers_allowed,
        callback_url, callback_every_change, send_at, not_before, expires_at,
        accepted_at, updated_at)
    OVERRIDING SYSTEM VALUE
    SELECT id, $1, client_ref, channel, CASE WHEN channel = 'sms' THEN 'sms' ELSE 'rcs' END,
           state, recipient_raw, msisdn, true, sms_text, sms_encoding, sms_parts,
           rcs_content::jsonb, carrier_named,
           CASE WHEN carriers_allowed IS NULL THEN NULL
                ELSE string_to_array(carriers_allowed, ',') END,
           callback_url, callback_every_change, send_at, not_before, expires_at, $19, $19
    FROM input
    ON CONFLICT (account_id, client_ref) DO NOTHING
    RETURNING id, state
),
logged AS (
    INSERT INTO message_events (message_id, at, kind, state, detail)
    SELECT id, $19, 'accepted', state, '{"source": "http"}'::jsonb FROM inserted
)
SELECT id FROM inserted;

-- name: find_by_client_refs
SELECT client_ref, id, sms_parts FROM messages
WHERE account_id = $1 AND client_ref = ANY($2::text[]);

-- name: get_message
SELECT id, account_id, client_ref, channel, leg, state, reason_code, reason_text,
       recipient_raw, msisdn, sms_parts, sms_encoding, carrier_named, carriers_allowed,
       carrier, carriers_tried, attempt, resends_done, send_at, not_before, fallback_at,
       expires_at, receipt_deadline, accepted_at, submitted_at, rcs_sent_at, final_at,
       updated_at, sms_units, rcs_units, callback_url
FROM messages
WHERE id = $1 AND account_id = $2;

-- name: get_message_by_client_ref
SELECT id FROM messages WHERE account_id = $1 AND client_ref = $2;

-- name: get_message_events
SELECT at, kind, state, carrier, detail FROM message_events
WHERE message_id = $1
ORDER BY id;

-- name: get_message_parts
SELECT attempt, part_no, part_total, carrier, bind_id, smsc_message_id, state, command_status,
       receipt_stat, receipt_err, sent_at, resp_at, receipt_at
FROM parts
WHERE message_id = $1
ORDER BY attempt, part_no;

-- name: due_accounts
-- Accounts with due work and how much (capped), so the dispatcher takes
-- tokens only for messages that exist. Uses messages_claimable per account.
SELECT a.account_id, d.due
FROM accounts a
CROSS JOIN LATERAL (
    SELECT count(*)::int AS due
    FROM (SELECT 1 FROM messages m
          WHERE m.account_id = a.account_id AND m.state = 'queued' AND m.not_before <= $1
          LIMIT $2) AS capped
) AS d
WHERE d.due > 0;

-- name: claim_due
-- Claim up to quota[i] due messages of account[i] under a lease.
WITH quotas AS (
    -- Each account's share of this claim: the tokens it was granted, so one
    -- busy account cannot starve another.
    SELECT account_id, quota FROM unnest($4::text[], $5::int[]) AS q(account_id, quota)
),
due AS (
    -- Oldest first within the account (FIFO per recipient follows); SKIP
    -- LOCKED lets several daemons claim from one queue without waiting.
    SELECT picked.id
    FROM quotas q
    CROSS JOIN LATERAL (
        SELECT id FROM messages
        WHERE account_id = q.account_id AND state = 'queued' AND not_before <= $1
        ORDER BY not_before, id
        LIMIT q.quota
        FOR UPDATE SKIP LOCKED
    ) AS picked
)
UPDATE messages m
   SET state = 'dispatching', lease_owner = $2, lease_expires_at = $3, updated_at = $1
  FROM due
 WHERE m.id = due.id
RETURNING m.id, m.account_id, m.channel, m.leg, m.validated, m.recipient_raw, m.msisdn,
          m.sms_text, m.sms_encoding, m.sms_parts, m.rcs_content, m.carrier_named,
          m.carriers_allowed, m.carrier, m.carriers_tried, m.attempt, m.resends_done,
          m.expires_at, m.accepted_at, m.send_at;
