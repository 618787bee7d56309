-- Replies to a send (DOMAIN §14, domain/replies.py).
-- choice: the survey choice code a reply matched (NULL: it matched none, or
-- its send has no choices). Written by the inbound hook in the transaction
-- that stores the reply (engine/send_replies.py).
ALTER TABLE inbound_messages ADD COLUMN choice text;

-- GET /v1/sends/{id}/replies pages a send's replies oldest first, and the
-- tally reads each recipient's latest matched answer.
CREATE INDEX inbound_by_send_id ON inbound_messages (send_id, id) WHERE send_id IS NOT NULL;
DROP INDEX inbound_by_send;
