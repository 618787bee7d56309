-- Routes (DOMAIN §6): a carrier may be reached over its premium route
-- (direct, fixed sender numbers) or another one (an ordinary route through
-- another SMSC); each account chooses per carrier.
--
-- The route of a message's current SMS attempt, beside its carrier (written
-- with it by the lifecycle writer). NULL: no SMS attempt yet, or a message
-- from before routes, all of which went over the premium route.
ALTER TABLE messages ADD COLUMN route text;

-- Billing counts per route too: SMS units by the route that carried them;
-- '' for what has no route (+Message, reassigned-number checks). The SMS
-- counts so far were all carried by the premium route.
ALTER TABLE billing_counts ADD COLUMN route text NOT NULL DEFAULT '';
UPDATE billing_counts SET route = 'premium' WHERE channel = 'sms';
ALTER TABLE billing_counts DROP CONSTRAINT billing_counts_pkey,
    ADD PRIMARY KEY (account_id, month, channel, route);
