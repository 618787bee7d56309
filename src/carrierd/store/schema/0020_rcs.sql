-- +Message leg (DOMAIN §8, §9): capability cache, status webhooks that beat
-- their send, inbound de-duplication. Timers stay where they were:
-- messages.fallback_at and messages.expires_at (rcs_sent rows).

-- The platform's capability answer per number, reused for capability_ttl_s
-- so that a campaign to the same list asks once per number, not per message.
-- checked_at is the daemon's time (passed in), never now().
CREATE TABLE rcs_capabilities (
    msisdn      text PRIMARY KEY,
    capable     boolean NOT NULL,
    checked_at  timestamptz NOT NULL
);
-- The purge walks stale answers oldest first.
CREATE INDEX rcs_capabilities_by_age ON rcs_capabilities (checked_at);

-- A status webhook for a message that is not rcs_sent yet: the platform can
-- deliver and report before the transaction that records its send commits,
-- or a send whose answer was lost (5xx after storing) is still queued for a
-- retry. The status waits here and is applied in the transaction that moves
-- the message to rcs_sent. Repeats of the same status are one row.
CREATE TABLE rcs_early_statuses (
    message_id   bigint NOT NULL REFERENCES messages ON DELETE CASCADE,
    status       text NOT NULL CHECK (status IN ('delivered', 'failed')),
    -- The platform's time of the status (falls back to received_at).
    at           timestamptz NOT NULL,
    error        text,
    received_at  timestamptz NOT NULL,
    PRIMARY KEY (message_id, status)
);
CREATE INDEX rcs_early_statuses_by_age ON rcs_early_statuses (received_at);

-- A reply that names no message it answers is owned by the account of the
-- latest +Message sent to the number: this finds it without walking three
-- months of history. Partial, so SMS-only rows cost nothing.
CREATE INDEX messages_rcs_by_msisdn ON messages (msisdn, rcs_sent_at)
    WHERE rcs_sent_at IS NOT NULL;

-- The platform repeats webhooks it got no 2xx for; its msgId (kept in raw)
-- makes a repeated inbound +Message one row.
CREATE UNIQUE INDEX inbound_rcs_platform_msg_id ON inbound_messages ((raw ->> 'msgId'))
    WHERE channel = 'rcs';
