-- DOMAIN §13: the reassigned-number check, asked for per message with the
-- date the sender got the recipient's consent (intake's
-- reassigned_check.base_date; NULL: no check). The verdict and the month of
-- the database's data it was judged on are kept on the row: a message
-- judged no_history goes back to the queue, and its next claim sends it on
-- without a second lookup. Its history has the same (engine/reassign_gate.py).
ALTER TABLE messages
    ADD COLUMN reassign_base_date  date,
    ADD COLUMN reassign_verdict    text CHECK (reassign_verdict IN ('no_history', 'history')),
    ADD COLUMN reassign_data_month text CHECK (reassign_data_month ~ '^[0-9]{4}-(0[1-9]|1[0-2])$');
