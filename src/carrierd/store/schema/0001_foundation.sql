-- carrierd foundation schema.
--
-- PostgreSQL is the only state (DESIGN principle 1). Every timer is an
-- indexed timestamp column (principle 4); no business default uses now():
-- the daemon passes the time in so that tests control it.

CREATE TABLE accounts (
    account_id      text PRIMARY KEY,
    -- Mirrors the account settings that SQL-feed validation and reports need;
    -- the daemon upserts it from its configuration at start and on reload.
    allow_m2m       boolean NOT NULL DEFAULT false,
    max_sms_chars   integer NOT NULL DEFAULT 660 CHECK (max_sms_chars BETWEEN 1 AND 670)
);

CREATE TABLE api_tokens (
    token_sha256    bytea PRIMARY KEY,
    account_id      text NOT NULL REFERENCES accounts ON DELETE CASCADE
);

-- Message states follow domain/states.py; the CHECK lists them so that a
-- typo in SQL cannot invent one.
--   scheduled    send_at in the future; the settler queues it when due
--   queued       claimable once not_before has passed
--   dispatching  claimed under a lease (lease_owner, lease_expires_at)
--   sending      SMS marked before its first submit_sm leaves
--   submitted    every part accepted by the SMSC; waiting for receipts
--   rcs_sent     +Message accepted by the platform; fallback/expiry timers run
--   delivered, failed, expired, cancelled, skipped, rejected, unknown: final
CREATE TABLE messages (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id          text NOT NULL REFERENCES accounts,
    client_ref          text,
    channel             text NOT NULL CHECK (channel IN ('sms', 'rcs', 'rcs_then_sms')),
    -- The leg being worked on: 'rcs' first for rcs_then_sms, 'sms' after fallback.
    leg                 text NOT NULL CHECK (leg IN ('sms', 'rcs')),
    state               text NOT NULL CHECK (state IN (
                            'scheduled', 'queued', 'dispatching', 'sending', 'submitted',
                            'rcs_sent', 'delivered', 'failed', 'expired', 'cancelled',
                            'skipped', 'rejected', 'unknown')),
    reason_code         text,
    reason_text         text,
    -- Raw recipient as given (kept for SQL-feed rows validated later) and
    -- its canonical +81 form once validated.
    recipient_raw       text NOT NULL,
    msisdn              text,
    validated           boolean NOT NULL,
    sms_text            text,
    sms_encoding        text,
    sms_parts           integer,
    rcs_content         jsonb,
    carrier_named       text,
    carriers_allowed    text[],
    carrier             text,
    -- Carriers that answered "not our subscriber" for this message (§4).
    carriers_wrong      text[] NOT NULL DEFAULT '{}',
    callback_url        text,
    callback_every_change boolean NOT NULL DEFAULT false,
    attempt             integer NOT NULL DEFAULT 0,
    resends_done        integer NOT NULL DEFAULT 0,
    -- Timers (principle 4).
    send_at             timestamptz,
    not_before          timestamptz NOT NULL,
    fallback_at         timestamptz,
    expires_at          timestamptz NOT NULL,
    receipt_deadline    timestamptz,
    lease_owner         text,
    lease_expires_at    timestamptz,
    -- Timestamps of the message's life.
    accepted_at         timestamptz NOT NULL,
    submitted_at        timestamptz,
    rcs_sent_at         timestamptz,
    final_at            timestamptz,
    updated_at          timestamptz NOT NULL,
    -- Billing (DOMAIN §11): parts delivered, +Message delivered in time.
    sms_units           integer NOT NULL DEFAULT 0,
    rcs_units           integer NOT NULL DEFAULT 0,
    CONSTRAINT client_ref_unique UNIQUE (account_id, client_ref)
);

-- The claim query: per account, oldest due first (dispatcher fairness).
CREATE INDEX messages_claimable ON messages (account_id, not_before, id)
    WHERE state = 'queued';
-- Timers the settler scans; each partial so that it stays small.
CREATE INDEX messages_scheduled_due ON messages (not_before) WHERE state = 'scheduled';
CREATE INDEX messages_lease_due ON messages (lease_expires_at)
    WHERE state IN ('dispatching', 'sending');
CREATE INDEX messages_receipt_due ON messages (receipt_deadline) WHERE state = 'submitted';
CREATE INDEX messages_fallback_due ON messages (fallback_at) WHERE state = 'rcs_sent';
CREATE INDEX messages_expiry_due ON messages (expires_at)
    WHERE state IN ('scheduled', 'queued', 'rcs_sent');
-- The au gate and FIFO per recipient look up open messages by number.
CREATE INDEX messages_open_by_msisdn ON messages (msisdn, id)
    WHERE state IN ('queued', 'dispatching', 'sending', 'submitted', 'rcs_sent');
-- Delivery log export per account and time (DOMAIN §15).
CREATE INDEX messages_by_account_time ON messages (account_id, accepted_at);

-- Parts handed to a carrier. attempt counts carrier attempts of one message
-- (rerouting, system resend), so a resend never overwrites history.
--   pending    marked before the submit_sm leaves (crash safety)
--   accepted   submit_sm_resp OK, smsc_message_id known
--   refused    submit_sm_resp with an error status
--   unsent     never handed over (no bind up, or shutdown before it left)
--   delivered, failed, unknown: outcome from a receipt or a timeout
CREATE TABLE parts (
    message_id       bigint NOT NULL REFERENCES messages ON DELETE CASCADE,
    attempt          integer NOT NULL,
    part_no          integer NOT NULL,
    part_total       integer NOT NULL,
    carrier          text NOT NULL,
    bind_id          text,
    smsc_message_id  text,
    state            text NOT NULL CHECK (state IN (
                         'pending', 'accepted', 'refused', 'unsent', 'delivered', 'failed', 'unknown')),
    command_status   integer,
    receipt_stat     text,
    receipt_err      text,
    sent_at          timestamptz NOT NULL,
    resp_at          timestamptz,
    receipt_at       timestamptz,
    PRIMARY KEY (message_id, attempt, part_no)
);
-- Not unique: SMSCs recycle message ids, and a receipt belongs to the most
-- recent part that carries the id.
CREATE INDEX parts_by_smsc_id ON parts (carrier, smsc_message_id, sent_at)
    WHERE smsc_message_id IS NOT NULL;

-- A receipt that arrives before its submit_sm_resp waits here until the
-- response names the same SMSC message id.
CREATE TABLE early_receipts (
    carrier          text NOT NULL,
    smsc_message_id  text NOT NULL,
    stat             text NOT NULL,
    err              text,
    received_at      timestamptz NOT NULL,
    PRIMARY KEY (carrier, smsc_message_id)
);

-- Append-only delivery log (DOMAIN §15): one row per thing that happened.
CREATE TABLE message_events (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id   bigint NOT NULL REFERENCES messages ON DELETE CASCADE,
    at           timestamptz NOT NULL,
    kind         text NOT NULL,
    state        text,
    carrier      text,
    detail       jsonb
);
CREATE INDEX message_events_by_message ON message_events (message_id, id);

CREATE TABLE inbound_messages (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id      text REFERENCES accounts,
    channel         text NOT NULL CHECK (channel IN ('sms', 'rcs')),
    carrier         text,
    msisdn          text NOT NULL,
    to_address      text,
    text            text,
    postback        text,
    in_reply_to     bigint REFERENCES messages ON DELETE SET NULL,
    received_at     timestamptz NOT NULL,
    raw             jsonb
);
CREATE INDEX inbound_by_account_time ON inbound_messages (account_id, received_at);

-- Billing counts per account, calendar month (JST) and channel (DOMAIN §11),
-- incremented in the transaction that records the delivery.
CREATE TABLE billing_counts (
    account_id  text NOT NULL REFERENCES accounts,
    month       text NOT NULL CHECK (month ~ '^[0-9]{4}-[0-9]{2}$'),
    channel     text NOT NULL CHECK (channel IN ('sms', 'rcs', 'reassigned_check')),
    units       bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, month, channel)
);

-- Account token buckets shared by every daemon on this database (DOMAIN §5).
CREATE TABLE rate_buckets (
    account_id  text PRIMARY KEY REFERENCES accounts,
    tokens      double precision NOT NULL,
    updated_at  timestamptz NOT NULL
);

-- Carriers learned from earlier deliveries (DOMAIN §4).
CREATE TABLE carrier_learned (
    msisdn      text PRIMARY KEY,
    carrier     text NOT NULL,
    learned_at  timestamptz NOT NULL
);

-- au spacing (DOMAIN §5): when the last SMS to this number reached a final
-- receipt state; the next one waits spacing_s after it.
CREATE TABLE au_gate (
    msisdn          text PRIMARY KEY,
    last_final_at   timestamptz NOT NULL
);
