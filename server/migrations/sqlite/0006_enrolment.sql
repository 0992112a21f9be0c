-- Issue 14, enrolment tokens: an agent enrols itself with a token an admin created. Kept
-- identical to ../postgres/0006_enrolment.sql.

-- The tokens, stored as hashes (shown once, like user tokens). `labels` is a JSON object of
-- strings given to every host enrolled with the token; `uses` counts the enrolments that
-- created or took back a host, in the same transaction, so it never passes `max_uses`
-- (NULL: unlimited). A revoked token enrols nobody; hosts it enrolled stay.
CREATE TABLE enrolment_tokens (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    token_hash       TEXT NOT NULL UNIQUE,
    prefix           TEXT NOT NULL,
    labels           TEXT,
    require_approval BIGINT NOT NULL DEFAULT 0,
    max_uses         BIGINT,
    uses             BIGINT NOT NULL DEFAULT 0,
    created_by       TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    expires_at       BIGINT,
    revoked_at       BIGINT,
    last_used_at     BIGINT
);
CREATE INDEX idx_enrolment_tokens_created ON enrolment_tokens(created_at, id);

-- A host that enrolled itself: the token it used, the hash of its machine id (the same
-- machine with the same name gets its host back) and, while it waits for an admin's
-- approval, when it started waiting (NULL: not waiting). The token's labels become the host's
-- admin labels (`docker_hosts.labels`, from 0005).
ALTER TABLE docker_hosts ADD COLUMN enrolment_token_id TEXT;
ALTER TABLE docker_hosts ADD COLUMN machine_id TEXT;
ALTER TABLE docker_hosts ADD COLUMN pending_since BIGINT;
