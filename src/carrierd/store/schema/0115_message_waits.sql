-- The wait a queued message is in (engine/lifecycle.py, Move.wait): why,
-- since when, and how often it was retried for that same cause. Its history
-- gets one event when the wait starts and one when it ends, whatever the
-- number of retries between: a carrier away for an hour must not add an
-- event per second to every message waiting for it.
ALTER TABLE messages
    ADD COLUMN wait_cause text,
    ADD COLUMN wait_since timestamptz,
    ADD COLUMN wait_retries integer NOT NULL DEFAULT 0;
