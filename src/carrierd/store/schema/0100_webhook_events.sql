-- +Message webhooks applied, one row per signed body: a replay of the same
-- body (an attacker's capture within the timestamp window, or the
-- platform's retry of an event we did answer) finds its key here and
-- changes nothing. The key is the SHA-256 of the body's bytes, inserted in
-- the transaction that applies the event, so "applied" and "recorded" are
-- one commit. Rows older than the platform's retry horizon are purged.
CREATE TABLE webhook_events (
    event_key    bytea PRIMARY KEY CHECK (octet_length(event_key) = 32),
    received_at  timestamptz NOT NULL
);
CREATE INDEX webhook_events_by_age ON webhook_events (received_at);
