-- A receipt may name its part by two ids: receipted_message_id, in the
-- submit_sm_resp id's base, and the text "id:", in the carrier's receipt
-- base (channels/sms.py). When they differ, either may be the part's, so a
-- receipt that waits for its part keeps the second one too.
ALTER TABLE early_receipts ADD COLUMN alt_smsc_message_id text;
