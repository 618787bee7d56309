-- Queued messages that were sent once already (a reroute after "not our
-- subscriber", a retry, a resend): claim_due takes them without a token of
-- the account's rate, which counts messages, not attempts. Few at any
-- time, so a small index of their own beside messages_claimable.
CREATE INDEX messages_claimable_sent_before ON messages (account_id, not_before, id)
    WHERE state = 'queued' AND attempt > 0;
