-- Issue 13: a command may name what started it besides its requester (`bulk:ID`, `stack:ID`,
-- ...), so a run over many commands finds each one's final state again after a restart.
-- NULL for a plain request. Kept identical in both dialects.
ALTER TABLE commands ADD COLUMN origin TEXT;
CREATE INDEX idx_commands_origin ON commands(origin, seq);
