-- Replies (engine/inbound.py, domain/inbound.py): one owner for SMS MO and
-- +Message replies and taps, their reassembly, de-duplication and push.

-- What a stored reply is, beyond 0001's columns:
--   kind           text (a typed reply) | suggestion_reply | suggestion_action (a tap)
--   send_id        the send (案件) the answered message belongs to: filled
--                  by the sends feature; a filter of GET /v1/inbound already
--   incomplete     a concatenated SMS whose parts did not all come in time
--   parts_expected / parts_received   of a concatenated SMS
--   data_coding    the SMPP data_coding it came in
--   text_undecodable, raw_hex   bytes that did not decode: text is the best
--                  effort (U+FFFD where it failed), raw_hex the bytes as sent
--   keyword        the opt-out keyword it matched, when it did
ALTER TABLE inbound_messages
    ADD COLUMN kind text NOT NULL DEFAULT 'text'
        CHECK (kind IN ('text', 'suggestion_reply', 'suggestion_action')),
    ADD COLUMN send_id bigint,
    ADD COLUMN incomplete boolean NOT NULL DEFAULT false,
    ADD COLUMN parts_expected integer,
    ADD COLUMN parts_received integer,
    ADD COLUMN data_coding integer,
    ADD COLUMN text_undecodable boolean NOT NULL DEFAULT false,
    ADD COLUMN raw_hex text,
    ADD COLUMN keyword text;

-- GET /v1/inbound pages an account's replies newest first, keyed on
-- (received_at, id); the number and answered-message filters have their own.
CREATE INDEX inbound_by_account_time_id ON inbound_messages (account_id, received_at, id);
DROP INDEX inbound_by_account_time;
CREATE INDEX inbound_by_account_msisdn ON inbound_messages (account_id, msisdn, received_at, id);
CREATE INDEX inbound_by_answered ON inbound_messages (in_reply_to) WHERE in_reply_to IS NOT NULL;
CREATE INDEX inbound_by_send ON inbound_messages (send_id) WHERE send_id IS NOT NULL;
-- Retention walks replies oldest first (ops/retention.py).
CREATE INDEX inbound_by_received ON inbound_messages (received_at);

-- A reply answers the account's last message to the number: the latest SMS
-- the SMSC accepted (submitted_at) or +Message sent (rcs_sent_at,
-- messages_rcs_by_msisdn of 0020). Partial: a message not yet sent costs
-- nothing here.
CREATE INDEX messages_sms_by_msisdn ON messages (msisdn, submitted_at)
    WHERE submitted_at IS NOT NULL;

-- A deliver_sm has no id of its own: the key of its bytes (the carrier, the
-- addresses, data_coding, concatenation and body) seen within the duplicate
-- window is a delivery repeated because our acknowledgement was lost. Kept
-- seen_at is the daemon's time; old keys are purged by the settle pass.
CREATE TABLE inbound_sms_seen (
    mo_key   bytea PRIMARY KEY CHECK (octet_length(mo_key) = 32),
    seen_at  timestamptz NOT NULL
);
CREATE INDEX inbound_sms_seen_by_age ON inbound_sms_seen (seen_at);

-- Concatenated MO being reassembled: one row per message (its timer: at
-- deadline_at the settle pass stores what arrived, marked incomplete) and
-- one per part. Parts come on any bind of any daemon, in any order; each
-- part is durable before its deliver_sm is acknowledged.
CREATE TABLE inbound_sms_reassembly (
    carrier      text NOT NULL,
    msisdn       text NOT NULL,
    to_address   text NOT NULL,
    reference    integer NOT NULL,
    total        integer NOT NULL CHECK (total BETWEEN 2 AND 255),
    first_at     timestamptz NOT NULL,
    deadline_at  timestamptz NOT NULL,
    PRIMARY KEY (carrier, msisdn, to_address, reference, total)
);
CREATE INDEX inbound_sms_reassembly_due ON inbound_sms_reassembly (deadline_at);

CREATE TABLE inbound_sms_parts (
    carrier      text NOT NULL,
    msisdn       text NOT NULL,
    to_address   text NOT NULL,
    reference    integer NOT NULL,
    total        integer NOT NULL,
    seq          integer NOT NULL CHECK (seq BETWEEN 1 AND total),
    data_coding  integer NOT NULL,
    -- Octets of the user data header before payload (GSM 7-bit packed
    -- text starts after fill bits that depend on it).
    udh_octets   integer NOT NULL,
    payload      bytea NOT NULL,
    received_at  timestamptz NOT NULL,
    PRIMARY KEY (carrier, msisdn, to_address, reference, total, seq),
    FOREIGN KEY (carrier, msisdn, to_address, reference, total)
        REFERENCES inbound_sms_reassembly ON DELETE CASCADE
);

-- Replies pushed to the account's inbound_callback_url: the status
-- callbacks' outbox (0010) for replies, with their states and fencing, and
-- one rule more: per account and number, a push leaves only once every
-- earlier one is sent or given up, so a receiver sees a number's replies in
-- the order they came.
CREATE TABLE inbound_callbacks (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    inbound_id       bigint NOT NULL REFERENCES inbound_messages ON DELETE CASCADE,
    account_id       text NOT NULL REFERENCES accounts,
    msisdn           text NOT NULL,
    url              text NOT NULL,
    payload          jsonb NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    state            text NOT NULL DEFAULT 'pending'
                         CHECK (state IN ('pending', 'sent', 'gave_up')),
    last_error       text,
    created_at       timestamptz NOT NULL,
    finished_at      timestamptz
);
CREATE INDEX inbound_callbacks_due ON inbound_callbacks (next_attempt_at, id)
    WHERE state = 'pending';
CREATE INDEX inbound_callbacks_by_number ON inbound_callbacks (account_id, msisdn, id)
    WHERE state = 'pending';
