-- Sends (案件, DOMAIN §14): one content to many recipients, each recipient a
-- message of its own linked to the send.
--
-- A send is registered in bounded transactions (one per batch of
-- recipients). `rows_done` is the high-water mark of recipients committed:
-- a POST retried with the same client_ref after a crash resumes after it
-- instead of registering the first rows twice. `first_message_id` and
-- `last_message_id` bound the ids of the send's messages, so reading a send
-- walks the primary key over that range instead of needing an index on
-- messages.send_id (an index every state change of every message would
-- pay for).
CREATE TABLE sends (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id         text NOT NULL REFERENCES accounts,
    client_ref         text,
    request_sha256     bytea NOT NULL CHECK (octet_length(request_sha256) = 32),
    -- registering: recipients are still being read (or the POST that read
    -- them died: a retry with the same client_ref resumes it);
    -- registered: every recipient read; cancelled: the sender cancelled it.
    state              text NOT NULL CHECK (state IN ('registering', 'registered', 'cancelled')),
    channel            text NOT NULL CHECK (channel IN ('sms', 'rcs', 'rcs_then_sms')),
    -- The send as posted, recipients aside (content, options, follow-up).
    spec               jsonb NOT NULL,
    group_id           bigint,
    -- Follow-up (連続配信): released this long after the first message is
    -- delivered, valid this long from then. NULL: no follow-up.
    follow_up_delay_s  integer CHECK (follow_up_delay_s >= 0),
    follow_up_validity_s double precision,
    rows_done          integer NOT NULL DEFAULT 0,
    accepted           integer NOT NULL DEFAULT 0,
    rejected           integer NOT NULL DEFAULT 0,
    first_message_id   bigint,
    last_message_id    bigint,
    created_at         timestamptz NOT NULL,
    registered_at      timestamptz,
    cancelled_at       timestamptz
);
CREATE UNIQUE INDEX sends_client_ref ON sends (account_id, client_ref) WHERE client_ref IS NOT NULL;
CREATE INDEX sends_by_account ON sends (account_id, id);

-- A recipient row the send could not take: its row (JSON index, or CSV
-- record number with the header as 1), the field and why.
CREATE TABLE send_rejections (
    send_id  bigint NOT NULL REFERENCES sends ON DELETE CASCADE,
    row_no   integer NOT NULL,
    field    text NOT NULL,
    reason   text NOT NULL,
    PRIMARY KEY (send_id, row_no)
);

-- send_id/send_row: the send and its recipient ordinal (messages from
-- /v1/messages have none). after_message_id: a follow-up's first message.
-- A follow-up waits in 'scheduled' with not_before at 'infinity' (the
-- scheduled-send timer never takes it) until the lifecycle writer, in the
-- transaction that ends its first message, releases or skips it; its
-- expires_at ends it should the first never settle.
ALTER TABLE messages
    ADD COLUMN send_id bigint,
    ADD COLUMN send_row integer,
    ADD COLUMN after_message_id bigint;
-- Only follow-ups still waiting are in it: every other message, and a
-- follow-up once released, costs this index nothing.
CREATE INDEX messages_follow_ups_waiting ON messages (after_message_id)
    WHERE state = 'scheduled' AND after_message_id IS NOT NULL;
