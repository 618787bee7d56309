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
-- the caller then reads the existing id with find_by_client_refs, and
-- compares the content hashes (request_sha256) to tell a retry from a conflict.
WITH input AS (
    SELECT *
    FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                $8::text[], $9::text[], $10::int[], $11::text[], $12::text[], $13::text[],
                $14::text[], $15::boolean[], $16::timestamptz[], $17::timestamptz[],
                $18::timestamptz[], $20::bytea[], $21::boolean[], $22::timestamptz[],
                $23::date[])
         AS t(id, client_ref, channel, state, recipient_raw, msisdn, sms_text, sms_encoding,
              sms_parts, rcs_content, carrier_named, carriers_allowed, callback_url,
              callback_every_change, send_at, not_before, expires_at, request_sha256,
              skip_opted_out, optout_check_at, reassign_base_date)
),
inserted AS (
    INSERT INTO messages (
        id, account_id, client_ref, channel, leg, state, recipient_raw, msisdn, validated,
        sms_text, sms_encoding, sms_parts, rcs_content, carrier_named, carriers_allowed,
        callback_url, callback_every_change, send_at, not_before, expires_at,
        accepted_at, updated_at, request_sha256, skip_opted_out, optout_check_at, opted_out,
        reassign_base_date)
    OVERRIDING SYSTEM VALUE
    SELECT id, $1, client_ref, channel, CASE WHEN channel = 'sms' THEN 'sms' ELSE 'rcs' END,
           state, recipient_raw, msisdn, true, sms_text, sms_encoding, sms_parts,
           rcs_content::jsonb, carrier_named,
           CASE WHEN carriers_allowed IS NULL THEN NULL
                ELSE string_to_array(carriers_allowed, ',') END,
           callback_url, callback_every_change, send_at, not_before, expires_at, $19, $19,
           request_sha256, skip_opted_out, optout_check_at,
           -- DOMAIN §12: a send that reads its opt-out list at registration
           -- (domain/gates.py: no check due later) reads it here, in the
           -- statement that stores it.
           CASE WHEN skip_opted_out AND optout_check_at IS NULL
                THEN EXISTS (SELECT 1 FROM optouts o
                              WHERE o.account_id = $1 AND o.msisdn = input.msisdn) END,
           reassign_base_date
    FROM input
    ON CONFLICT (account_id, client_ref) WHERE client_ref IS NOT NULL DO NOTHING
    RETURNING id, state
),
logged AS (
    INSERT INTO message_events (message_id, at, kind, state, detail)
    SELECT id, $19, 'accepted', state, '{"source": "http"}'::jsonb FROM inserted
)
SELECT id FROM inserted;

-- name: find_by_client_refs
SELECT client_ref, id, sms_parts, request_sha256 FROM messages
WHERE account_id = $1 AND client_ref = ANY($2::text[]);

-- name: get_message
SELECT id, account_id, client_ref, channel, leg, state, reason_code, reason_text,
       recipient_raw, msisdn, sms_parts, sms_encoding, carrier_named, carriers_allowed,
       carrier, route, carriers_wrong, attempt, resends_done, send_at, not_before, fallback_at,
       expires_at, receipt_deadline, accepted_at, submitted_at, rcs_sent_at, final_at,
       updated_at, sms_units, rcs_units, callback_url
FROM messages
WHERE id = $1 AND account_id = $2;

-- name: search_messages
-- GET /v1/messages: one page of the account's messages, newest first, each
-- filter applied only when given (NULL: any). Keyset pagination on
-- (accepted_at, id) after the cursor ($9, $10): a message accepted while a
-- client pages is newer than the cursor and never shifts a later page.
-- Served by messages_by_account_time_id (and client_ref_unique).
SELECT id, account_id, client_ref, channel, leg, state, reason_code, reason_text,
       recipient_raw, msisdn, sms_parts, carrier, route, carriers_wrong, attempt, send_at,
       expires_at, accepted_at, submitted_at, rcs_sent_at, final_at, updated_at,
       sms_units, rcs_units
FROM messages
WHERE account_id = $1
  AND ($2::text[] IS NULL OR state = ANY($2::text[]))
  AND ($3::text IS NULL OR msisdn = $3)
  AND ($4::timestamptz IS NULL OR accepted_at >= $4)
  AND ($5::timestamptz IS NULL OR accepted_at < $5)
  AND ($6::text IS NULL OR client_ref = $6)
  AND ($7::text IS NULL OR channel = $7)
  AND ($8::text IS NULL OR carrier = $8)
  AND ($9::timestamptz IS NULL OR (accepted_at, id) < ($9, $10::bigint))
ORDER BY accepted_at DESC, id DESC
LIMIT $11;

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
-- `due`: messages never sent, each to spend a token of the account's rate;
-- `again`: messages already sent once (a reroute after "not our
-- subscriber", a retry, a resend), whose token is spent: the rate counts
-- messages, not attempts. Each count reads only its index (no row is
-- fetched): `due` is all due messages but those sent once.
SELECT a.account_id, greatest(d.due - s.again, 0) AS due, s.again
FROM accounts a
CROSS JOIN LATERAL (
    SELECT count(*)::int AS due
    FROM (SELECT 1 FROM messages m
          WHERE m.account_id = a.account_id AND m.state = 'queued' AND m.not_before <= $1
          LIMIT $2) AS capped
) AS d
CROSS JOIN LATERAL (
    SELECT count(*)::int AS again
    FROM (SELECT 1 FROM messages m
          WHERE m.account_id = a.account_id AND m.state = 'queued' AND m.not_before <= $1
            AND m.attempt > 0
          LIMIT $2) AS capped
) AS s
WHERE d.due > 0;

-- name: claim_due
-- Lock up to quota[i] due messages of account[i] for this claim's
-- transaction, which decides them and marks the SMS ones 'sending' before it
-- commits: no row version is written just to claim, and a daemon that dies
-- mid-claim leaves the rows queued (its transaction rolls back).
WITH quotas AS (
    -- Each account's share of this claim: the tokens it was granted for
    -- messages never sent ($3), so one busy account cannot starve another,
    -- and how many already sent once it may take again ($4, no token: see
    -- due_accounts).
    SELECT account_id, quota, again
    FROM unnest($2::text[], $3::int[], $4::int[]) AS q(account_id, quota, again)
),
-- Oldest first within the account (FIFO per recipient follows); SKIP
-- LOCKED lets several daemons claim from one queue without waiting.
never_sent AS (
    SELECT picked.*
    FROM quotas q
    CROSS JOIN LATERAL (
        SELECT id, account_id, channel, leg, validated, recipient_raw, msisdn, sms_text,
               sms_encoding, sms_parts, rcs_content, carrier_named, carriers_allowed, carrier,
               carriers_wrong, attempt, resends_done, expires_at, accepted_at, send_at,
               not_before, skip_opted_out, opted_out, reassign_base_date, reassign_verdict
        FROM messages
        WHERE account_id = q.account_id AND state = 'queued' AND not_before <= $1
          AND attempt = 0
        ORDER BY not_before, id
        LIMIT q.quota
        FOR UPDATE SKIP LOCKED
    ) AS picked
),
sent_before AS (
    SELECT picked.*
    FROM quotas q
    CROSS JOIN LATERAL (
        SELECT id, account_id, channel, leg, validated, recipient_raw, msisdn, sms_text,
               sms_encoding, sms_parts, rcs_content, carrier_named, carriers_allowed, carrier,
               carriers_wrong, attempt, resends_done, expires_at, accepted_at, send_at,
               not_before, skip_opted_out, opted_out, reassign_base_date, reassign_verdict
        FROM messages
        WHERE account_id = q.account_id AND state = 'queued' AND not_before <= $1
          AND attempt > 0
        ORDER BY not_before, id
        LIMIT q.again
        FOR UPDATE SKIP LOCKED
    ) AS picked
)
SELECT * FROM never_sent
UNION ALL
SELECT * FROM sent_before
ORDER BY account_id, not_before, id;

-- name: ensure_buckets
-- A new bucket starts empty: a restart or a new account never bursts above
-- the contracted rate; tokens accrue from the first claim on.
INSERT INTO rate_buckets (account_id, tokens, updated_at)
SELECT * FROM unnest($1::text[], $2::float8[], $3::timestamptz[])
ON CONFLICT (account_id) DO NOTHING;

-- name: lock_buckets
-- Held until the transaction ends: daemons sharing the database take
-- tokens one after the other, so together they never exceed the rate.
SELECT account_id, tokens, updated_at FROM rate_buckets
WHERE account_id = ANY($1::text[])
ORDER BY account_id
FOR UPDATE;

-- name: store_buckets
UPDATE rate_buckets b SET tokens = i.tokens, updated_at = i.updated_at
FROM unnest($1::text[], $2::float8[], $3::timestamptz[]) AS i(account_id, tokens, updated_at)
WHERE b.account_id = i.account_id;

-- name: return_tokens
-- Tokens granted for messages another daemon claimed first go back.
UPDATE rate_buckets b SET tokens = b.tokens + i.unused
FROM unnest($1::text[], $2::float8[]) AS i(account_id, unused)
WHERE b.account_id = i.account_id;

-- name: learned_carriers
-- Probed per number through the primary key, whatever the statistics say:
-- a plan cached while the table was small (a join, or "= ANY(array)") goes
-- on scanning it as it grows, until the next ANALYZE. The lateral subquery
-- with OFFSET 0 is planned on its own, as an index probe per number.
SELECT n.msisdn, l.carrier
FROM unnest($1::text[]) AS n(msisdn)
CROSS JOIN LATERAL (SELECT carrier FROM carrier_learned
                    WHERE msisdn = n.msisdn OFFSET 0) AS l;

-- name: learn_carriers
-- learned_at: when the carrier was learned or last changed (the recorder
-- skips deliveries that teach the resolver nothing new). Two deliveries to
-- one number in one flush: the later one is what was learned (ON CONFLICT
-- cannot take a row twice in one statement).
INSERT INTO carrier_learned (msisdn, carrier, learned_at)
SELECT DISTINCT ON (msisdn) msisdn, carrier, learned_at
FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS i(msisdn, carrier, learned_at)
ORDER BY msisdn, learned_at DESC
ON CONFLICT (msisdn) DO UPDATE SET carrier = EXCLUDED.carrier, learned_at = EXCLUDED.learned_at;

-- name: au_gate_state
-- For au numbers about to be sent: is an SMS to the number still in flight
-- (sending/submitted on au), and when did the last one reach a final receipt?
-- Probes per number (learned_carriers says why). As an EXISTS, PostgreSQL
-- hashed every open message once per call instead: 10 ms a call with tens
-- of thousands open, whatever the batch.
SELECT n.msisdn, f.in_flight IS NOT NULL AS in_flight, g.last_final_at
FROM unnest($1::text[]) AS n(msisdn)
LEFT JOIN LATERAL (SELECT true AS in_flight FROM messages m
                   WHERE m.msisdn = n.msisdn AND m.state IN ('sending', 'submitted')
                     AND m.leg = 'sms' AND m.carrier = 'au' AND m.id <> ALL($2::bigint[])
                   LIMIT 1) AS f ON true
LEFT JOIN LATERAL (SELECT last_final_at FROM au_gate
                   WHERE msisdn = n.msisdn OFFSET 0) AS g ON true;

-- name: au_gate_release
-- A final receipt for an au SMS: remember when, and move the messages the
-- gate held for the number (au_gate_waiting) to final + spacing. One whose
-- not_before changed since the hold (rescheduled for another reason) keeps
-- its own time.
WITH input AS (
    SELECT msisdn, max(final_at) AS final_at
    FROM unnest($1::text[], $2::timestamptz[]) AS i(msisdn, final_at)
    GROUP BY msisdn
),
gate AS (
    INSERT INTO au_gate (msisdn, last_final_at)
    SELECT msisdn, final_at FROM input ORDER BY msisdn
    ON CONFLICT (msisdn) DO UPDATE
       SET last_final_at = greatest(au_gate.last_final_at, EXCLUDED.last_final_at)
),
released AS (
    DELETE FROM au_gate_waiting w
     USING input i
     WHERE w.msisdn = i.msisdn
    RETURNING w.message_id, w.recheck_at, i.final_at
)
UPDATE messages m
   SET not_before = r.final_at + make_interval(secs => $3::float8)
  FROM released r
 WHERE m.id = r.message_id AND m.state = 'queued' AND m.not_before = r.recheck_at;

-- name: au_gate_open
-- An au SMS ended without reaching the handset (refused, not au's
-- subscriber, never handed over): the messages the gate held for the
-- number go now ($2); their claim checks the spacing of an earlier
-- arrival again. As in au_gate_release, one rescheduled since keeps its time.
WITH released AS (
    DELETE FROM au_gate_waiting w
     WHERE w.msisdn = ANY($1::text[])
    RETURNING w.message_id, w.recheck_at
)
UPDATE messages m
   SET not_before = $2
  FROM released r
 WHERE m.id = r.message_id AND m.state = 'queued' AND m.not_before = r.recheck_at;

-- name: au_gate_hold
-- au SMS that wait for the previous one's final receipt, and the re-check
-- time their hold set (in case that receipt never comes).
INSERT INTO au_gate_waiting (message_id, msisdn, recheck_at)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::timestamptz[]) ORDER BY 1
ON CONFLICT (message_id) DO UPDATE
   SET msisdn = EXCLUDED.msisdn, recheck_at = EXCLUDED.recheck_at;

-- name: store_validation
-- SQL-feed rows validated at claim time by the same rules as HTTP intake.
UPDATE messages m
   SET validated = true, msisdn = i.msisdn, sms_text = i.sms_text, sms_encoding = i.sms_encoding,
       sms_parts = i.sms_parts, rcs_content = i.rcs_content::jsonb, updated_at = $1
  FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::int[], $7::text[])
       AS i(id, msisdn, sms_text, sms_encoding, sms_parts, rcs_content)
 WHERE m.id = i.id;

-- name: insert_parts
-- One row per submit_sm ($6: the §3 units each stands for), 'pending'
-- (about to leave) or, behind a part 1 sent alone first, 'unsent' ($8)
-- until release_parts_after_part_one.
INSERT INTO parts (message_id, attempt, part_no, part_total, carrier, state, sent_at, units)
SELECT i.message_id, i.attempt, i.part_no, i.part_total, i.carrier, i.state, $7, i.units
FROM unnest($1::bigint[], $2::int[], $3::int[], $4::int[], $5::text[], $6::int[], $8::text[])
     AS i(message_id, attempt, part_no, part_total, carrier, units, state);

-- name: release_parts_after_part_one
-- Part 1 went alone to a carrier not yet confirmed for the recipient and
-- was accepted: its other parts become 'pending' in the transaction that
-- records the acceptance, and leave only once it has committed. A crash
-- after this finds them in flight (never resent blindly); one before finds
-- them unsent. Only while the attempt is still the message's current one.
-- Parts a flush released already count as released: that flush committed
-- and its answer was lost (a server restart), so nobody sent them, and the
-- outcome written again must let them leave.
WITH released AS (
    UPDATE parts p
       SET state = 'pending', sent_at = $3
      FROM unnest($1::bigint[], $2::int[]) AS i(message_id, attempt), messages m
     WHERE p.message_id = i.message_id AND p.attempt = i.attempt AND p.part_no > 1
       AND p.state = 'unsent'
       AND m.id = i.message_id AND m.attempt = i.attempt
       AND m.state IN ('sending', 'submitted')
       AND EXISTS (SELECT 1 FROM parts one
                   WHERE one.message_id = i.message_id AND one.attempt = i.attempt
                     AND one.part_no = 1 AND one.state IN ('accepted', 'delivered'))
    RETURNING p.message_id, p.attempt
)
SELECT message_id, attempt FROM released
UNION
SELECT i.message_id, i.attempt
FROM unnest($1::bigint[], $2::int[]) AS i(message_id, attempt)
JOIN messages m ON m.id = i.message_id AND m.attempt = i.attempt
WHERE m.state IN ('sending', 'submitted')
  AND EXISTS (SELECT 1 FROM parts one
              WHERE one.message_id = i.message_id AND one.attempt = i.attempt
                AND one.part_no = 1 AND one.state IN ('accepted', 'delivered'))
  AND EXISTS (SELECT 1 FROM parts rest
              WHERE rest.message_id = i.message_id AND rest.attempt = i.attempt
                AND rest.part_no > 1 AND rest.state = 'pending')
  AND NOT EXISTS (SELECT 1 FROM parts rest
                  WHERE rest.message_id = i.message_id AND rest.attempt = i.attempt
                    AND rest.part_no > 1 AND rest.state NOT IN ('pending', 'unsent'));

-- name: record_part_responses
-- submit_sm_resp outcomes, written behind in batches. Only a pending part
-- changes (or one put in doubt because its attempt ended on another part
-- while it waited: its answer is still news): a late response never undoes
-- a receipt. $9: why an unknown outcome is unknown (NULL for the others).
WITH updated AS (
    UPDATE parts p
       SET state = i.state, smsc_message_id = i.smsc_message_id,
           command_status = i.command_status, bind_id = i.bind_id, resp_at = $8,
           unknown_cause = i.unknown_cause
      FROM unnest($1::bigint[], $2::int[], $3::int[], $4::text[], $5::text[], $6::int[],
                  $7::text[], $9::text[])
           AS i(message_id, attempt, part_no, state, smsc_message_id, command_status, bind_id,
                unknown_cause)
     WHERE p.message_id = i.message_id AND p.attempt = i.attempt AND p.part_no = i.part_no
       AND (p.state = 'pending'
            OR (p.state = 'unknown' AND p.unknown_cause = 'attempt_ended'))
    RETURNING p.message_id, p.attempt, p.part_no, p.smsc_message_id
)
DELETE FROM parts_in_doubt d
 USING updated u
 WHERE d.message_id = u.message_id AND d.attempt = u.attempt AND d.part_no = u.part_no
   AND u.smsc_message_id IS NOT NULL;

-- name: record_late_responses
-- A submit_sm_resp that came after its part was reported unknown (its
-- response timed out): what the SMSC did after all. Run after
-- record_part_responses, which may have recorded the unknown in the same
-- batch. Only a part still in doubt changes: a receipt matched meanwhile
-- wins. Returns the parts that changed.
WITH updated AS (
    UPDATE parts p
       SET state = i.state, smsc_message_id = i.smsc_message_id,
           command_status = i.command_status, bind_id = i.bind_id, resp_at = $8
      FROM unnest($1::bigint[], $2::int[], $3::int[], $4::text[], $5::text[], $6::int[],
                  $7::text[])
           AS i(message_id, attempt, part_no, state, smsc_message_id, command_status, bind_id)
     WHERE p.message_id = i.message_id AND p.attempt = i.attempt AND p.part_no = i.part_no
       AND p.state IN ('unknown', 'pending')
    RETURNING p.message_id, p.attempt, p.part_no
),
settled_doubt AS (
    DELETE FROM parts_in_doubt d
     USING updated u
     WHERE d.message_id = u.message_id AND d.attempt = u.attempt AND d.part_no = u.part_no
)
SELECT message_id, attempt, part_no FROM updated;

-- name: note_parts_in_doubt
-- Parts just recorded unknown, by carrier and recipient, for a receipt that
-- comes although their response did not (domain/receipt_match.py).
INSERT INTO parts_in_doubt (message_id, attempt, part_no, carrier, msisdn, sent_at)
SELECT p.message_id, p.attempt, p.part_no, p.carrier, m.msisdn, p.sent_at
FROM unnest($1::bigint[], $2::int[], $3::int[]) AS i(message_id, attempt, part_no)
JOIN parts p ON p.message_id = i.message_id AND p.attempt = i.attempt AND p.part_no = i.part_no
JOIN messages m ON m.id = p.message_id
WHERE p.state = 'unknown' AND p.smsc_message_id IS NULL AND m.msisdn IS NOT NULL
ORDER BY 1, 2, 3
ON CONFLICT DO NOTHING;

-- name: apply_early_receipts
-- Receipts that beat their submit_sm_resp (or reached another daemon first)
-- meet their part once the part knows its SMSC id: the newest accepted (or
-- unknown: its message became unknown meanwhile) part with either of the
-- receipt's ids, as in record_receipts. Driven from
-- early_receipts, usually empty, with one index probe per id: cheap
-- whatever the size of parts.
WITH waiting AS (
    -- Rows another flush (or daemon) holds are its to match: concurrent
    -- flushes waited on each other here, and a receipt's deliver_sm is
    -- answered only when its flush commits. What is skipped meets its part
    -- in the next flush or the settler's sweep.
    SELECT carrier, smsc_message_id, alt_smsc_message_id FROM early_receipts
    FOR UPDATE SKIP LOCKED
),
found AS (
    SELECT e.carrier, e.smsc_message_id, p.message_id, p.attempt, p.part_no
    FROM waiting e
    CROSS JOIN LATERAL (
        -- One probe of parts_by_smsc_id per id: an OR of the two ids would
        -- lose the index's sent_at order, or the index altogether.
        (SELECT message_id, attempt, part_no, sent_at FROM parts
          WHERE carrier = e.carrier AND smsc_message_id = e.smsc_message_id
            AND state IN ('accepted', 'unknown')
          ORDER BY sent_at DESC
          LIMIT 1)
        UNION ALL
        (SELECT message_id, attempt, part_no, sent_at FROM parts
          WHERE carrier = e.carrier AND smsc_message_id = e.alt_smsc_message_id
            AND state IN ('accepted', 'unknown')
          ORDER BY sent_at DESC
          LIMIT 1)
        ORDER BY sent_at DESC
        LIMIT 1
    ) AS p
),
matched AS (
    DELETE FROM early_receipts e
     USING found f
     WHERE e.carrier = f.carrier AND e.smsc_message_id = f.smsc_message_id
    RETURNING f.message_id, f.attempt, f.part_no, e.stat, e.err, e.received_at
)
UPDATE parts p
   SET state = CASE WHEN m.stat = 'DELIVRD' THEN 'delivered' ELSE 'failed' END,
       receipt_stat = m.stat, receipt_err = m.err, receipt_at = m.received_at
  FROM matched m
 WHERE p.message_id = m.message_id AND p.attempt = m.attempt AND p.part_no = m.part_no
   AND p.state IN ('accepted', 'unknown')
RETURNING p.message_id, p.state, p.carrier, p.receipt_at, p.resp_at, p.attempt, p.units;

-- name: record_receipts
-- Final receipts by SMSC id, and by the receipt's second id ($6, NULL when
-- it has none: channels/sms.py); one that finds no part yet waits in
-- early_receipts, with what else it says about its part ($7-$9), should
-- its part never learn an id. Returns the parts that changed, for state
-- and billing.
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                         $6::text[], $7::text[], $8::text[], $9::text[])
             AS i(carrier, smsc_message_id, stat, err, received_at, alt_smsc_message_id,
                  recipient_addr, submit_date, text_start)
),
target AS (
    -- SMSCs recycle ids: the receipt is for the newest part with either id.
    -- DISTINCT ON: the same receipt twice in one batch settles its part once.
    SELECT DISTINCT ON (i.carrier, i.smsc_message_id)
           p.message_id, p.attempt, p.part_no, i.carrier, i.smsc_message_id,
           i.stat, i.err, i.received_at
    FROM input i
    CROSS JOIN LATERAL (
        -- One probe of parts_by_smsc_id per id: an OR of the two ids would
        -- lose the index's sent_at order, or the index altogether.
        (SELECT message_id, attempt, part_no, sent_at FROM parts
          WHERE carrier = i.carrier AND smsc_message_id = i.smsc_message_id
          ORDER BY sent_at DESC
          LIMIT 1)
        UNION ALL
        (SELECT message_id, attempt, part_no, sent_at FROM parts
          WHERE carrier = i.carrier AND smsc_message_id = i.alt_smsc_message_id
          ORDER BY sent_at DESC
          LIMIT 1)
        ORDER BY sent_at DESC
        LIMIT 1
    ) AS p
    ORDER BY i.carrier, i.smsc_message_id, p.sent_at DESC
),
updated AS (
    UPDATE parts p
       SET state = CASE WHEN i.stat = 'DELIVRD' THEN 'delivered' ELSE 'failed' END,
           receipt_stat = i.stat, receipt_err = i.err, receipt_at = i.received_at
      FROM target i
     WHERE p.message_id = i.message_id AND p.attempt = i.attempt AND p.part_no = i.part_no
       -- On the row itself, not only as read above: a concurrent flush (or
       -- daemon) holding the same receipt re-sent may have settled the part
       -- meanwhile; PostgreSQL re-checks this after waiting for its lock.
       AND p.state IN ('accepted', 'unknown')
    RETURNING p.message_id, p.state, p.carrier, p.receipt_at, p.resp_at, p.attempt, p.units
),
early AS (
    INSERT INTO early_receipts (carrier, smsc_message_id, alt_smsc_message_id, stat, err,
                                received_at, recipient_addr, submit_date, text_start)
    SELECT i.carrier, i.smsc_message_id, i.alt_smsc_message_id, i.stat, i.err, i.received_at,
           i.recipient_addr, i.submit_date, i.text_start
    FROM input i
    -- No part with either id, whatever its state (target looked at them all).
    WHERE NOT EXISTS (SELECT 1 FROM target t
                      WHERE t.carrier = i.carrier AND t.smsc_message_id = i.smsc_message_id)
    ON CONFLICT (carrier, smsc_message_id) DO NOTHING
    RETURNING carrier
)
SELECT message_id, state, carrier, receipt_at, resp_at, attempt, units FROM updated
UNION ALL
-- One row per receipt left waiting, so that the write-behind looks again.
SELECT NULL, 'early', carrier, NULL, NULL, NULL, NULL FROM early;

-- name: lock_messages
-- Taken before deciding from parts, so two daemons handling receipts for
-- parts of one message decide one after the other.
SELECT id FROM messages WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE;

-- name: attempt_parts
-- What the parts of each message's current attempt say. 'unknown' too: a
-- late final receipt settles a message whose outcome was unknown.
SELECT m.id, m.state, m.account_id, m.channel, m.carrier, m.route, m.attempt, m.msisdn,
       m.resends_done, m.carrier_named,
       count(p.part_no)::int AS total,
       count(*) FILTER (WHERE p.state = 'pending')::int AS pending,
       count(*) FILTER (WHERE p.state = 'accepted')::int AS accepted,
       count(*) FILTER (WHERE p.state = 'refused')::int AS refused,
       count(*) FILTER (WHERE p.state = 'delivered')::int AS delivered,
       count(*) FILTER (WHERE p.state = 'failed')::int AS failed,
       count(*) FILTER (WHERE p.state = 'unknown')::int AS unknown,
       count(*) FILTER (WHERE p.state = 'unsent')::int AS unsent,
       coalesce(sum(p.units) FILTER (WHERE p.state = 'delivered'), 0)::int AS delivered_units,
       (array_agg(p.command_status ORDER BY p.part_no) FILTER (WHERE p.state = 'refused'))[1]
           AS refused_status,
       (array_agg(p.receipt_stat ORDER BY p.part_no) FILTER (WHERE p.state = 'failed'))[1]
           AS failed_stat,
       (array_agg(p.receipt_err ORDER BY p.part_no) FILTER (WHERE p.state = 'failed'))[1]
           AS failed_err,
       (array_agg(p.unknown_cause ORDER BY p.part_no) FILTER (WHERE p.state = 'unknown'))[1]
           AS unknown_cause,
       max(p.receipt_at) AS last_receipt_at,
       max(p.resp_at) AS last_resp_at,
       (SELECT l.carrier FROM carrier_learned l WHERE l.msisdn = m.msisdn) AS learned_carrier
FROM messages m
JOIN parts p ON p.message_id = m.id AND p.attempt = m.attempt
WHERE m.id = ANY($1::bigint[]) AND m.state IN ('sending', 'submitted', 'unknown')
GROUP BY m.id;

-- name: apply_moves
-- Every state change of every message goes through here, and only
-- engine/lifecycle.py runs it (tests/unit/test_state_writer.py checks):
-- the moves domain/lifecycle.py checked against the state table, applied
-- only to a row still in the state each was decided from (a row another
-- daemon moved meanwhile is left alone, and not logged). NULL inputs keep
-- the column as it is.
--
-- Waits (Move.wait): a move with a wait cause logs its event only when the
-- wait starts (or its cause changes); repeats of the same cause only count
-- in wait_retries. The move that ends a wait (any other move of the
-- message) logs `wait_ended` first, with the cause, the retries and how long
-- it waited.
WITH input AS (
    SELECT * FROM unnest(
        $1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],
        $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[],
        $11::text[], $12::text[], $13::int[], $14::int[], $15::boolean[], $16::text[],
        $17::timestamptz[], $18::int[], $19::int[], $20::text[], $21::text[],
        $22::text[], $23::boolean[], $24::text[], $25::text[], $26::text[],
        $27::text[], $28::text[])
        AS i(id, from_state, to_state, reason_code, reason_text, not_before,
             receipt_deadline, fallback_at, expires_at, submitted_at,
             leg, carrier, attempt, resends_done, wrong_carrier, lease_owner,
             lease_until, sms_units, rcs_units, event_kind, event_detail, wait,
             retries_wait, route, reassign_verdict, reassign_data_month,
             first_kind, first_detail)
),
-- The moves from 'queued' and 'dispatching' (only there is a message in a
-- wait, or claimed to retry one: Move.retries_wait), with the wait as it
-- was before the move, read under the row lock the update takes anyway
-- (a claim's rows are already ours). Moves from other states go straight.
from_waitable AS (
    SELECT i.*, m.wait_cause AS waited_for, m.wait_since AS waited_since,
           m.wait_retries AS waited_retries
      FROM input i
      JOIN messages m ON m.id = i.id
     WHERE i.from_state IN ('queued', 'dispatching') AND m.state = i.from_state
     ORDER BY m.id
       FOR UPDATE OF m
),
source AS (
    SELECT i.*, NULL::text AS waited_for, NULL::timestamptz AS waited_since,
           NULL::int AS waited_retries
      FROM input i
     WHERE i.from_state NOT IN ('queued', 'dispatching')
    UNION ALL
    SELECT * FROM from_waitable
),
updated AS (
    UPDATE messages m
       SET state = i.to_state,
           -- A reason explains the state it came with; a later state that
           -- has none (delivered after a reroute) clears it.
           reason_code = i.reason_code,
           reason_text = i.reason_text,
           not_before = coalesce(i.not_before, m.not_before),
           receipt_deadline = CASE WHEN i.to_state = 'submitted' THEN i.receipt_deadline
                                   ELSE m.receipt_deadline END,
           -- When the SMSC accepted the attempt (its last submit_sm_resp); also
           -- for a message whose receipt settled it straight from 'sending'.
           submitted_at = coalesce(i.submitted_at,
                                   CASE WHEN i.to_state = 'submitted' THEN $29
                                        ELSE m.submitted_at END),
           rcs_sent_at = CASE WHEN i.to_state = 'rcs_sent' THEN $29 ELSE m.rcs_sent_at END,
           fallback_at = coalesce(i.fallback_at, m.fallback_at),
           expires_at = coalesce(i.expires_at, m.expires_at),
           final_at = CASE WHEN i.to_state IN ('delivered', 'failed', 'expired', 'cancelled',
                                               'skipped', 'rejected', 'unknown')
                           THEN $29 ELSE m.final_at END,
           sms_units = m.sms_units + coalesce(i.sms_units, 0),
           rcs_units = m.rcs_units + coalesce(i.rcs_units, 0),
           leg = coalesce(i.leg, m.leg),
           carrier = coalesce(i.carrier, m.carrier),
           route = coalesce(i.route, m.route),
           -- §13: a verdict, once judged, stays (no second lookup).
           reassign_verdict = coalesce(i.reassign_verdict, m.reassign_verdict),
           reassign_data_month = coalesce(i.reassign_data_month, m.reassign_data_month),
           attempt = coalesce(i.attempt, m.attempt),
           resends_done = coalesce(i.resends_done, m.resends_done),
           -- "Not our subscriber" (§4): the carrier of this attempt is
           -- never asked again for this message.
           carriers_wrong = CASE WHEN i.wrong_carrier AND m.carrier IS NOT NULL
                                      AND NOT (m.carrier = ANY(m.carriers_wrong))
                                 THEN m.carriers_wrong || m.carrier
                                 ELSE m.carriers_wrong END,
           -- A claim is held under a lease only in dispatching and sending.
           lease_owner = CASE WHEN i.to_state IN ('dispatching', 'sending')
                              THEN coalesce(i.lease_owner, m.lease_owner) END,
           lease_expires_at = CASE WHEN i.to_state IN ('dispatching', 'sending')
                                   THEN coalesce(i.lease_until, m.lease_expires_at) END,
           wait_cause = CASE WHEN i.retries_wait THEN m.wait_cause ELSE i.wait END,
           wait_since = CASE WHEN i.retries_wait THEN m.wait_since
                             WHEN i.wait IS NULL THEN NULL
                             WHEN i.wait = m.wait_cause THEN m.wait_since
                             ELSE $29 END,
           wait_retries = CASE WHEN i.retries_wait THEN m.wait_retries
                               WHEN i.wait = m.wait_cause THEN m.wait_retries + 1
                               ELSE 0 END,
           updated_at = $29
      FROM source i
     WHERE m.id = i.id AND m.state = i.from_state
    RETURNING m.id, m.state, m.account_id, m.channel, m.carrier, m.route, m.callback_url,
              m.callback_every_change, m.reason_code, m.reason_text, i.from_state,
              i.event_kind, i.event_detail, i.first_kind, i.first_detail,
              i.wait, i.waited_for, i.waited_since,
              i.waited_retries, i.retries_wait IS TRUE AS retries_wait,
              -- The same wait again, or the claim that retries it: silent.
              i.waited_for IS NOT NULL
                  AND (i.retries_wait IS TRUE OR i.wait IS NOT DISTINCT FROM i.waited_for)
                  AS wait_repeated
),
logged AS (
    INSERT INTO message_events (message_id, at, kind, state, carrier, detail)
    SELECT message_id, $29, kind, state, carrier, detail
      FROM (
        -- The wait this move ends, logged before the move's own event.
        SELECT id AS message_id, 0 AS seq, 'wait_ended' AS kind, from_state AS state,
               carrier,
               jsonb_build_object('why', waited_for, 'retries', waited_retries,
                                  'waited_s', round(extract(epoch FROM $29 - waited_since), 3))
                   AS detail
          FROM updated
         WHERE waited_for IS NOT NULL AND NOT retries_wait
           AND wait IS DISTINCT FROM waited_for
        UNION ALL
        -- A decision that rode on this move (Move.first_event), in the
        -- state it was taken in.
        SELECT id, 1, first_kind, from_state, carrier, first_detail::jsonb
          FROM updated
         WHERE first_kind IS NOT NULL
        UNION ALL
        SELECT id, 2, event_kind, state, carrier,
               CASE WHEN reason_code IS NULL THEN event_detail::jsonb
                    ELSE coalesce(event_detail::jsonb, '{}'::jsonb)
                         || jsonb_build_object('reason', reason_code, 'reason_text', reason_text)
               END
          FROM updated
         -- The same wait again: it only counts.
         WHERE NOT wait_repeated
      ) AS events
     ORDER BY message_id, seq
)
SELECT id, state, account_id, channel, carrier, route, callback_url, callback_every_change,
       wait_repeated
FROM updated;

-- name: apply_notes
-- History without a state change (engine/lifecycle.py only): applied while
-- the message is still in the state the note was decided in (NULL: any);
-- a note marked once is logged once per message. +Message units are set
-- once per message (§11: 1 per message), and `bills` says whether this
-- note set them.
WITH input AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[],
                         $5::timestamptz[], $6::int[], $7::boolean[], $9::int[])
             AS i(id, state, kind, detail, fallback_at, rcs_units, once, sms_units)
),
target AS (
    SELECT i.*, (i.rcs_units > 0 AND m.rcs_units = 0) AS bills
    FROM input i
    JOIN messages m ON m.id = i.id
    WHERE (i.state IS NULL OR m.state = i.state)
      AND NOT (i.once AND EXISTS (SELECT 1 FROM message_events e
                                   WHERE e.message_id = i.id AND e.kind = i.kind))
    ORDER BY i.id
    FOR UPDATE OF m
),
updated AS (
    UPDATE messages m
       SET fallback_at = coalesce(t.fallback_at, m.fallback_at),
           rcs_units = CASE WHEN t.bills THEN t.rcs_units ELSE m.rcs_units END,
           sms_units = m.sms_units + t.sms_units,
           updated_at = $8
      FROM target t
     WHERE m.id = t.id
    RETURNING m.id, m.state, m.account_id, m.carrier, m.route, t.kind, t.detail, t.bills
),
logged AS (
    INSERT INTO message_events (message_id, at, kind, state, carrier, detail)
    SELECT id, $8, kind, state, carrier, detail::jsonb FROM updated
)
SELECT id, account_id, route, bills FROM updated;

-- name: status_documents
-- What the public status document (domain/status.py) is built from, for
-- the status callbacks of messages that just moved.
SELECT id, account_id, client_ref, channel, leg, state, reason_code, reason_text,
       recipient_raw, msisdn, sms_parts, sms_encoding, carrier_named, carriers_allowed,
       carrier, route, carriers_wrong, attempt, resends_done, send_at, not_before, fallback_at,
       expires_at, receipt_deadline, accepted_at, submitted_at, rcs_sent_at, final_at,
       updated_at, sms_units, rcs_units, callback_url
FROM messages
WHERE id = ANY($1::bigint[]);

-- name: settled_attempts
-- Of these (message, attempt) pairs, those whose attempt was settled before
-- (the message moved on, ended, or became unknown): a part of it delivered
-- now is billed on its own. An attempt still open is billed when it settles.
SELECT i.message_id, i.attempt
FROM unnest($1::bigint[], $2::int[]) AS i(message_id, attempt)
JOIN messages m ON m.id = i.message_id
WHERE NOT (m.attempt = i.attempt AND m.state IN ('sending', 'submitted'));

-- name: add_billing
-- $5: the route that carried SMS units ('' for +Message).
INSERT INTO billing_counts (account_id, month, channel, units, route)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[])
ON CONFLICT (account_id, month, channel, route) DO UPDATE
   SET units = billing_counts.units + EXCLUDED.units;

-- name: parts_outcome_unknown
-- A dead daemon's parts still pending: written or not, nobody knows ($2:
-- the cause). With $3, accepted ones too: the message is sent again and
-- this attempt is over. Those without an SMSC id are noted in doubt, for
-- receipts that come anyway.
WITH changed AS (
    UPDATE parts p
       SET state = 'unknown',
           unknown_cause = CASE WHEN p.state = 'pending' THEN $2 ELSE p.unknown_cause END
      FROM messages m
     WHERE p.message_id = ANY($1::bigint[]) AND m.id = p.message_id
       AND (p.state = 'pending' OR ($3 AND p.state = 'accepted'))
    RETURNING p.message_id, p.attempt, p.part_no, p.carrier, m.msisdn, p.sent_at,
              p.smsc_message_id
)
INSERT INTO parts_in_doubt (message_id, attempt, part_no, carrier, msisdn, sent_at)
SELECT message_id, attempt, part_no, carrier, msisdn, sent_at FROM changed
WHERE smsc_message_id IS NULL AND msisdn IS NOT NULL
ORDER BY 1, 2, 3
ON CONFLICT DO NOTHING;

-- name: early_receipts_to_correlate
-- Receipts that waited $1 and more without meeting a part by id, and were
-- not tried by their other clues since $2 (oldest first, $3 recipients at
-- most), with every other receipt waiting for the same recipient at that
-- carrier: the receipts of one message's parts are matched together, so
-- that the one whose text names its part is never left out while the
-- others take parts in part order. Rows another daemon (or flush) holds
-- are its own.
WITH due AS (
    SELECT DISTINCT carrier, recipient_addr
    FROM (SELECT carrier, recipient_addr FROM early_receipts
          WHERE received_at <= $1 AND recipient_addr IS NOT NULL
            AND (checked_at IS NULL OR checked_at <= $2)
          ORDER BY received_at
          LIMIT $3) AS oldest
)
SELECT e.carrier, e.smsc_message_id, e.stat, e.err, e.received_at, e.recipient_addr,
       e.submit_date, e.text_start, e.ambiguous_at, e.checked_at
FROM early_receipts e
JOIN due d ON d.carrier = e.carrier AND d.recipient_addr = e.recipient_addr
ORDER BY e.received_at
FOR UPDATE OF e SKIP LOCKED;

-- name: doubt_candidates
-- For each receipt ($1: its index), the carrier's parts to its recipient
-- that never learned an SMSC id, sent within [earliest, latest]: unknown
-- ones (parts_in_doubt) and pending ones of messages being sent (through
-- messages_open_by_msisdn).
WITH input AS (
    SELECT * FROM unnest($1::int[], $2::text[], $3::text[], $4::timestamptz[],
                         $5::timestamptz[])
             AS i(receipt, carrier, msisdn, earliest, latest)
)
SELECT i.receipt, c.message_id, c.attempt, c.part_no, c.part_total, c.sent_at, c.sms_text,
       c.sms_encoding, c.state, c.unknown_cause, c.resp_at
FROM input i
CROSS JOIN LATERAL (
    SELECT p.message_id, p.attempt, p.part_no, p.part_total, p.sent_at, m.sms_text,
           m.sms_encoding, p.state, p.unknown_cause, p.resp_at
    FROM parts_in_doubt d
    JOIN parts p ON p.message_id = d.message_id AND p.attempt = d.attempt
                AND p.part_no = d.part_no
    JOIN messages m ON m.id = d.message_id
    WHERE d.carrier = i.carrier AND d.msisdn = i.msisdn
      AND d.sent_at BETWEEN i.earliest AND i.latest AND p.state = 'unknown'
    UNION ALL
    SELECT p.message_id, p.attempt, p.part_no, p.part_total, p.sent_at, m.sms_text,
           m.sms_encoding, p.state, p.unknown_cause, p.resp_at
    FROM messages m
    JOIN parts p ON p.message_id = m.id AND p.attempt = m.attempt
    WHERE m.msisdn = i.msisdn AND m.state = 'sending' AND p.carrier = i.carrier
      AND p.state = 'pending' AND p.sent_at BETWEEN i.earliest AND i.latest
) AS c;

-- name: correlate_receipts
-- Waiting receipts given to the part their other clues found
-- (domain/receipt_match.py). The part takes the receipt's id, so that the
-- same receipt delivered again finds it by id, and never another part.
-- A receipt whose id a part learned since the candidates were read (a
-- response committed meanwhile) is that part's: it stays for
-- apply_early_receipts; so does one whose part is no longer in doubt. A
-- receipt leaves early_receipts only with the part it settled. Returns the
-- parts that changed, as record_receipts does.
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::int[], $5::int[])
             AS i(carrier, smsc_message_id, message_id, attempt, part_no)
),
receipt AS (
    SELECT e.carrier, e.smsc_message_id, e.stat, e.err, e.received_at,
           i.message_id, i.attempt, i.part_no
    FROM input i
    JOIN early_receipts e ON e.carrier = i.carrier AND e.smsc_message_id = i.smsc_message_id
    WHERE NOT EXISTS (SELECT 1 FROM parts q
                       WHERE q.carrier = e.carrier AND q.smsc_message_id = e.smsc_message_id)
      AND NOT EXISTS (SELECT 1 FROM parts q
                       WHERE q.carrier = e.carrier
                         AND q.smsc_message_id = e.alt_smsc_message_id)
),
updated AS (
    UPDATE parts p
       SET state = CASE WHEN r.stat = 'DELIVRD' THEN 'delivered' ELSE 'failed' END,
           smsc_message_id = r.smsc_message_id,
           receipt_stat = r.stat, receipt_err = r.err, receipt_at = r.received_at
      FROM receipt r
     WHERE p.message_id = r.message_id AND p.attempt = r.attempt AND p.part_no = r.part_no
       -- On the row itself: PostgreSQL re-checks this after waiting for a
       -- concurrent writer's lock.
       AND p.state IN ('unknown', 'pending') AND p.smsc_message_id IS NULL
    RETURNING p.message_id, p.state, p.carrier, p.receipt_at, p.resp_at, p.attempt, p.units,
              p.part_no, r.smsc_message_id AS receipt_id
),
matched AS (
    DELETE FROM early_receipts e
     USING updated u
     WHERE e.carrier = u.carrier AND e.smsc_message_id = u.receipt_id
),
settled_doubt AS (
    DELETE FROM parts_in_doubt d
     USING updated u
     WHERE d.message_id = u.message_id AND d.attempt = u.attempt AND d.part_no = u.part_no
)
SELECT message_id, state, carrier, receipt_at, resp_at, attempt, units FROM updated;

-- name: mark_receipts_checked
-- Receipts tried by their other clues at $3 without a match; $4 says which
-- found two or more fitting parts. Returns those found ambiguous for the
-- first time (counted once).
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $4::boolean[])
             AS i(carrier, smsc_message_id, ambiguous)
)
UPDATE early_receipts e
   SET checked_at = $3,
       ambiguous_at = CASE WHEN i.ambiguous THEN coalesce(e.ambiguous_at, $3)
                           ELSE e.ambiguous_at END
  FROM input i
 WHERE e.carrier = i.carrier AND e.smsc_message_id = i.smsc_message_id
RETURNING e.carrier, (i.ambiguous AND e.ambiguous_at = $3) AS newly_ambiguous;

-- name: forget_old_doubts
-- Parts older than any receipt can be are no longer worth a lookup.
DELETE FROM parts_in_doubt WHERE sent_at < $1;

-- name: due_scheduled
SELECT id FROM messages WHERE state = 'scheduled' AND not_before <= $1
ORDER BY not_before LIMIT $2 FOR UPDATE SKIP LOCKED;

-- name: due_expired
SELECT id, state, channel, leg, carrier FROM messages
WHERE state IN ('scheduled', 'queued') AND expires_at <= $1
ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED;

-- name: due_receipt_timeouts
-- With the units of the parts delivered so far: the move to unknown bills
-- them (they reached the handset).
SELECT m.id, d.units AS delivered_units, d.last_receipt_at
FROM messages m
CROSS JOIN LATERAL (
    SELECT coalesce(sum(p.units), 0)::int AS units, max(p.receipt_at) AS last_receipt_at
    FROM parts p
    WHERE p.message_id = m.id AND p.attempt = m.attempt AND p.state = 'delivered'
) d
WHERE m.state = 'submitted' AND m.receipt_deadline <= $1
ORDER BY m.receipt_deadline LIMIT $2 FOR UPDATE OF m SKIP LOCKED;

-- name: due_lost_leases
-- Messages whose daemon died (its lease ran out) with what its parts say.
SELECT m.id, m.state, m.account_id, m.attempt,
       count(p.part_no) FILTER (WHERE p.state = 'pending')::int AS pending,
       count(p.part_no)::int AS parts
FROM messages m
LEFT JOIN parts p ON p.message_id = m.id AND p.attempt = m.attempt
WHERE m.state IN ('dispatching', 'sending') AND m.lease_expires_at <= $1
GROUP BY m.id
ORDER BY m.id
LIMIT $2;

-- name: claim_outcome
-- After a claim whose COMMIT went unanswered: which of its messages this
-- daemon holds (all of them if it committed, none if it rolled back).
SELECT id, state, attempt FROM messages
WHERE id = ANY($1::bigint[]) AND state IN ('dispatching', 'sending') AND lease_owner = $2;

-- name: release_lease_claims
-- On shutdown: what this daemon claimed but did not hand over goes back.
SELECT id FROM messages WHERE state = 'dispatching' AND lease_owner = $1;

-- name: expire_stale_au_gate_holds
-- A hold whose re-check time is long past: its message was re-checked by
-- the gate at that time (and held again under a new time, or sent), and the
-- final receipt that would have released it never came. The gate's own
-- check at claim time keeps the spacing without it.
DELETE FROM au_gate_waiting WHERE recheck_at < $1;

-- name: expire_stale_early_receipts
-- A receipt whose part never appears (its submit was lost, or the id is
-- garbage, or in a base the carrier's config does not expect) is kept a
-- while for late responses, then dropped. The rows go back to be reported:
-- each is dropped, so reported, once.
DELETE FROM early_receipts WHERE received_at < $1
RETURNING carrier, smsc_message_id, alt_smsc_message_id, stat, received_at;

-- name: insert_inbound_sms
-- Mobile-originated SMS, owned by the account whose address it was sent to.
INSERT INTO inbound_messages (account_id, channel, carrier, msisdn, to_address, text, received_at)
SELECT i.account_id, 'sms', i.carrier, i.msisdn, i.to_address, i.text, i.received_at
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[])
     AS i(account_id, carrier, msisdn, to_address, text, received_at);

-- name: renew_leases
-- The daemon is alive: keep its claims. One statement for all of them.
-- Locked in id order like every other multi-message writer (recorder
-- flushes lock their messages in id order), and a row a flush holds right
-- now is skipped: it is being settled, and the next renewal catches it if it
-- stays in flight. Updating in scan order instead deadlocked with flushes.
-- Only leases ending before $3 (the dispatcher says which): most messages
-- leave 'sending' within seconds of their claim, and rewriting their row
-- anyway was a row version for nothing.
WITH mine AS (
    SELECT id FROM messages
    WHERE lease_owner = $1 AND state IN ('dispatching', 'sending') AND lease_expires_at < $3
    ORDER BY id
    FOR UPDATE SKIP LOCKED
)
UPDATE messages m SET lease_expires_at = $2
  FROM mine
 WHERE m.id = mine.id;


-- name: own_claims_unanswered
-- This process's messages in 'sending' none of whose parts has an answer
-- (each pending, or unsent waiting for part 1), claimed before $2: the
-- dispatcher checks them against what it still holds (release_orphans).
SELECT m.id, m.attempt, m.carrier,
       array_agg(p.part_no ORDER BY p.part_no) FILTER (WHERE p.state = 'pending') AS pending
FROM messages m
JOIN parts p ON p.message_id = m.id AND p.attempt = m.attempt
WHERE m.lease_owner = $1 AND m.state = 'sending'
GROUP BY m.id
HAVING bool_and(p.state IN ('pending', 'unsent')) AND bool_or(p.state = 'pending')
   AND max(p.sent_at) < $2
LIMIT 1000;
