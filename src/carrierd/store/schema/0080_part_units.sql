-- A part row is one submit_sm, a record of what was sent. With
-- concat = "payload" one submit_sm carries a whole multipart text (the SMSC
-- splits it) and gets one SMSC id and one receipt, yet bills the §3 units
-- of every part it stands for: `units` says how many.
ALTER TABLE parts ADD COLUMN units integer NOT NULL DEFAULT 1 CHECK (units BETWEEN 1 AND 10);
