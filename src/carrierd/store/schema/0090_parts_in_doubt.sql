-- Parts whose outcome is unknown, and receipts whose SMSC id matches no part.
--
-- Why a part's outcome is unknown (domain/attempt.py names the reason):
-- 'response_timeout', 'bind_lost', 'unusable_response', 'daemon_stopped'.
ALTER TABLE parts ADD COLUMN unknown_cause text;

-- The unknown parts, by carrier and recipient, so that a receipt whose id
-- matches no part can find the part it is for (domain/receipt_match.py).
-- A table of its own rather than a partial index on parts: an index whose
-- predicate reads parts.state would make every receipt's update of a part
-- a non-HOT update. Rows are few (only unknown parts) and go when their
-- part is matched, answers late, or is older than any receipt can be.
CREATE TABLE parts_in_doubt (
    message_id  bigint NOT NULL,
    attempt     integer NOT NULL,
    part_no     integer NOT NULL,
    carrier     text NOT NULL,
    msisdn      text NOT NULL,
    sent_at     timestamptz NOT NULL,
    PRIMARY KEY (message_id, attempt, part_no)
);
CREATE INDEX parts_in_doubt_by_recipient ON parts_in_doubt (carrier, msisdn, sent_at);
CREATE INDEX parts_in_doubt_by_age ON parts_in_doubt (sent_at);

-- What a waiting receipt says besides its id, read only when the id finds
-- no part: the handset's address (source_addr), the Appendix B submit date
-- and text as written. checked_at: when a match by these was last tried;
-- ambiguous_at: when two or more parts first fitted (counted once).
ALTER TABLE early_receipts
    ADD COLUMN recipient_addr text,
    ADD COLUMN submit_date text,
    ADD COLUMN text_start text,
    ADD COLUMN checked_at timestamptz,
    ADD COLUMN ambiguous_at timestamptz;
