-- Issue 7 ("nothing lost, nobody in"): the command queue, the tamper-evident audit chain and
-- per-agent message signing. Kept column-for-column identical to ../sqlite/0002_*.sql.

-- Commands: queued -> sent -> succeeded | failed | expired. `status` (pending/success/error)
-- stays for older clients. `params_enc` is the operation's params, encrypted with the at-rest
-- key (they may hold environment values). `seq` is the creation order (strictly increasing).
ALTER TABLE commands ADD COLUMN state TEXT;
ALTER TABLE commands ADD COLUMN seq BIGINT;
ALTER TABLE commands ADD COLUMN queued BIGINT NOT NULL DEFAULT 0;
ALTER TABLE commands ADD COLUMN agent_ref TEXT;
ALTER TABLE commands ADD COLUMN params_enc TEXT;
ALTER TABLE commands ADD COLUMN timeout_secs BIGINT;
ALTER TABLE commands ADD COLUMN expires_at BIGINT;
ALTER TABLE commands ADD COLUMN idempotency_key TEXT;
ALTER TABLE commands ADD COLUMN client_key BIGINT NOT NULL DEFAULT 0;
ALTER TABLE commands ADD COLUMN result TEXT;
ALTER TABLE commands ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE commands ADD COLUMN sent_at BIGINT;
ALTER TABLE commands ADD COLUMN updated_at BIGINT;
CREATE UNIQUE INDEX idx_commands_idempotency ON commands(host_id, idempotency_key);
CREATE INDEX idx_commands_queue ON commands(host_id, queued, state, seq);
CREATE INDEX idx_commands_state ON commands(state, completed_at);

-- The audit chain: each entry stores the hash of the previous one and its own hash; the one
-- row of audit_head is the chain's head (and the lock that serialises appends).
ALTER TABLE audit_log ADD COLUMN prev_hash TEXT;
ALTER TABLE audit_log ADD COLUMN hash TEXT;
CREATE TABLE audit_head (
    id          BIGINT PRIMARY KEY,
    seq         BIGINT NOT NULL,
    hash        TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);
INSERT INTO audit_head (id, seq, hash, updated_at)
    SELECT 1, COALESCE(MAX(seq), 0), '', 0 FROM audit_log;

-- Message signing: the per-agent HMAC key, encrypted with the at-rest key. NULL: off.
ALTER TABLE docker_agents ADD COLUMN signing_key_enc TEXT;
