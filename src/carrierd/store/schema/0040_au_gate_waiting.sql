-- au SMS held by the gate because the previous SMS to the number is still
-- in flight, with the re-check time the hold gave them. The final receipt
-- of the one in flight moves exactly these to final + spacing: most
-- receipts are for numbers nobody waits on, and searching the queue by
-- number on every receipt batch cost more than the rest of the batch (a plan
-- from young statistics walked the whole queue).
CREATE TABLE au_gate_waiting (
    message_id      bigint PRIMARY KEY,
    msisdn          text NOT NULL,
    recheck_at      timestamptz NOT NULL
);
CREATE INDEX au_gate_waiting_by_msisdn ON au_gate_waiting (msisdn);
