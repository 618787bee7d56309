-- Operations: durable status callbacks, retention and the queue gauges.

-- Status callbacks to the account's URL (DOMAIN §10). A row is written in
-- the transaction that changes the message's state, so a callback can be
-- neither lost by a crash nor sent for a change that rolled back.
--   pending   due at next_attempt_at. A sender that claims the row pushes
--             next_attempt_at forward by its lease, so a sender that dies
--             mid-POST leaves the row due again later (at least once).
--   sent      the receiver answered 2xx (final)
--   gave_up   still failing max_age after created_at (final)
-- attempts counts attempts started; it doubles as the fencing token that
-- stops a sender whose lease ran out from overwriting a newer attempt.
CREATE TABLE status_callbacks (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Retention deletes old messages; their finished callbacks go with them.
    message_id       bigint NOT NULL REFERENCES messages ON DELETE CASCADE,
    account_id       text NOT NULL REFERENCES accounts,
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
CREATE INDEX status_callbacks_due ON status_callbacks (next_attempt_at, id)
    WHERE state = 'pending';
CREATE INDEX status_callbacks_by_message ON status_callbacks (message_id);

-- Retention (DOMAIN §15 keeps 3 months): the purge walks final messages
-- oldest first. An entry is added once per message, when it ends.
CREATE INDEX messages_final_at ON messages (final_at) WHERE final_at IS NOT NULL;

-- Queue gauges count the open messages per state and account every few
-- seconds; without this index that is a scan of 100 days of history.
CREATE INDEX messages_open_by_state ON messages (state, account_id)
    INCLUDE (accepted_at, send_at)
    WHERE state IN ('scheduled', 'queued', 'dispatching', 'sending', 'submitted', 'rcs_sent');

-- The delivery log export pages by (accepted_at, id) within one account; with
-- id in the key a page starts exactly where the previous one ended, even
-- inside an intake batch that shares one accepted_at. Same cost as the
-- index it replaces, which it also serves.
CREATE INDEX messages_by_account_time_id ON messages (account_id, accepted_at, id);
DROP INDEX messages_by_account_time;
