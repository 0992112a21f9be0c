-- Issue 16: stacks (compose applications), their versions, their state on each host, and
-- registry credentials sent with image pulls. The compose file and the env of a version can
-- hold secrets and a registry's password is one: they are stored as ciphertext (`v1:`, see
-- crypto.rs). Kept identical in both dialects.
CREATE TABLE stacks (
    name TEXT PRIMARY KEY,
    version BIGINT NOT NULL,
    -- The targets of the current version as the request gave them (JSON: selector or host_ids).
    targets TEXT NOT NULL,
    -- Set while the stack is being removed (`{"volumes": bool}` as JSON text).
    removing TEXT,
    rollout_id TEXT,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE stack_versions (
    stack TEXT NOT NULL REFERENCES stacks(name) ON DELETE CASCADE,
    version BIGINT NOT NULL,
    compose_enc TEXT NOT NULL,
    env_enc TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (stack, version)
);

-- One row per stack and host: the version wanted there, the one applied, and how the last
-- run went (`pending`, `deploying`, `deployed`, `failed`, `removing`).
CREATE TABLE stack_hosts (
    stack TEXT NOT NULL REFERENCES stacks(name) ON DELETE CASCADE,
    host_id TEXT NOT NULL,
    wanted_version BIGINT NOT NULL,
    applied_version BIGINT,
    state TEXT NOT NULL,
    error TEXT,
    rollout_id TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (stack, host_id)
);
CREATE INDEX idx_stack_hosts_host ON stack_hosts(host_id);

CREATE TABLE registries (
    id TEXT PRIMARY KEY,
    server TEXT NOT NULL UNIQUE,
    username TEXT NOT NULL,
    password_enc TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
