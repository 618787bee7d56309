-- DOMAIN §12: a send may skip numbers on its account's opt-out list.
--
-- skip_opted_out   the send asked for it; NULL (SQL-feed rows that did not
--                  say) takes the account's default at claim time.
-- opted_out        the verdict: NULL not read yet, true on the list, false
--                  not. Read once per message, at the time domain/gates.py
--                  says (registration, or 15 minutes before send_at), and
--                  then only read: the dispatcher skips on it before the
--                  legs split.
-- optout_check_at  a scheduled send's check, due 15 minutes before send_at
--                  (a timer row, DESIGN principle 4): the settler reads
--                  the list then, counting the numbers added by this time.
ALTER TABLE messages
    ADD COLUMN skip_opted_out  boolean,
    ADD COLUMN opted_out       boolean,
    ADD COLUMN optout_check_at timestamptz;

-- Only the checks still to run are indexed: a handful against millions of
-- messages.
CREATE INDEX messages_optout_check_due ON messages (optout_check_at)
    WHERE optout_check_at IS NOT NULL;

-- carrierd_enqueue gains p_skip_opted_out (NULL: the account's default).
-- The old function is replaced, not overloaded: two overloads whose
-- trailing parameters all have defaults make every short call ambiguous.
-- Calls of the old signature (positional or named) mean what they meant.
-- A fed row is validated when a dispatcher claims it, and its opt-out
-- check is made then too (scheduled or not).
DROP FUNCTION carrierd_enqueue(text, text, text, text, jsonb, text, timestamptz, text[], text);

CREATE FUNCTION carrierd_enqueue(
    p_account_id     text,
    p_to             text,
    p_channel        text,
    p_sms_text       text DEFAULT NULL,
    p_rcs_content    jsonb DEFAULT NULL,
    p_client_ref     text DEFAULT NULL,
    p_send_at        timestamptz DEFAULT NULL,
    p_carriers       text[] DEFAULT NULL,
    p_callback_url   text DEFAULT NULL,
    p_skip_opted_out boolean DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_now        timestamptz := clock_timestamp();
    v_id         bigint;
    v_state      text := 'queued';
    v_channel    text := p_channel;
    v_reason     text;
    v_start      timestamptz;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM accounts WHERE account_id = p_account_id) THEN
        RAISE EXCEPTION 'carrierd_enqueue: unknown account %', p_account_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF p_client_ref IS NOT NULL THEN
        SELECT id INTO v_id FROM messages
         WHERE account_id = p_account_id AND client_ref = p_client_ref;
        IF FOUND THEN
            RETURN v_id;
        END IF;
    END IF;
    IF v_channel IS NULL OR v_channel NOT IN ('sms', 'rcs', 'rcs_then_sms') THEN
        v_reason := format('channel: must be sms, rcs or rcs_then_sms, not %s',
                           coalesce(quote_literal(p_channel), 'null'));
        v_channel := 'sms';
        v_state := 'rejected';
    ELSIF p_send_at IS NOT NULL AND p_send_at > v_now THEN
        v_state := 'scheduled';
    END IF;
    v_start := greatest(v_now, coalesce(p_send_at, v_now));
    INSERT INTO messages (
        account_id, client_ref, channel, leg, state, reason_code, reason_text,
        recipient_raw, validated, sms_text, rcs_content, carriers_allowed,
        callback_url, send_at, not_before, expires_at, accepted_at, updated_at,
        final_at, skip_opted_out)
    VALUES (
        p_account_id, p_client_ref, v_channel,
        CASE WHEN v_channel = 'sms' THEN 'sms' ELSE 'rcs' END,
        v_state,
        CASE WHEN v_reason IS NULL THEN NULL ELSE 'invalid_field' END, v_reason,
        coalesce(p_to, ''), false, p_sms_text, p_rcs_content, p_carriers,
        p_callback_url, p_send_at, v_start, v_start + interval '72 hours', v_now, v_now,
        CASE WHEN v_state = 'rejected' THEN v_now END, p_skip_opted_out)
    RETURNING id INTO v_id;
    INSERT INTO message_events (message_id, at, kind, state, detail)
    VALUES (v_id, v_now, 'accepted', v_state,
            jsonb_build_object('source', 'sql', 'reason', v_reason));
    RETURN v_id;
END;
$$;
