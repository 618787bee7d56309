-- The au gate is purged of numbers whose spacing ran out long ago (ops/
-- retention.py), and the au_gate_held gauge counts those still inside it:
-- both look rows up by last_final_at.
CREATE INDEX au_gate_by_last_final ON au_gate (last_final_at);
