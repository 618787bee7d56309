-- A capability answer is the answer of one official account (bot): a
-- recipient who blocked one company's account is "not capable" for that
-- bot only, and must not send every other company's +Message to SMS.
-- Answers cached before bots were told apart are dropped: a cache, asked
-- again on the next send.
DELETE FROM rcs_capabilities;
ALTER TABLE rcs_capabilities DROP CONSTRAINT rcs_capabilities_pkey;
ALTER TABLE rcs_capabilities ADD COLUMN bot_id text NOT NULL;
ALTER TABLE rcs_capabilities ADD PRIMARY KEY (bot_id, msisdn);
