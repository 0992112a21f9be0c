-- docker-ctl schema, PostgreSQL dialect. Kept column-for-column identical to
-- ../sqlite/0001_initial.sql: the server talks to both through sqlx's Any driver, so ids are
-- TEXT (UUID strings made by the server), times are BIGINT Unix milliseconds and JSON is TEXT
-- (the server validates it). That keeps every query portable.

CREATE TABLE users (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    role        TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    created_at  BIGINT NOT NULL
);

CREATE TABLE api_tokens (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_hash    TEXT NOT NULL UNIQUE,
    prefix        TEXT NOT NULL,
    allowed_cidrs TEXT,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT,
    revoked_at    BIGINT,
    last_used_at  BIGINT
);

CREATE TABLE docker_hosts (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    connection_mode TEXT NOT NULL DEFAULT 'direct' CHECK (connection_mode IN ('direct', 'agent')),
    docker_url      TEXT,
    tls_ca          TEXT,
    tls_cert        TEXT,
    -- The client key, AES-256-GCM encrypted with the key kept outside the database.
    tls_key_enc     TEXT,
    tls_server_name TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);

CREATE TABLE docker_agents (
    id                     TEXT PRIMARY KEY,
    agent_id               TEXT NOT NULL UNIQUE,
    host_id                TEXT REFERENCES docker_hosts(id) ON DELETE SET NULL,
    auth_token_hash        TEXT NOT NULL,
    token_expires_at       BIGINT,
    prev_token_hash        TEXT,
    prev_token_valid_until BIGINT,
    revoked_at             BIGINT,
    allowed_cidrs          TEXT,
    heartbeat_interval     BIGINT,
    command_timeout        BIGINT,
    status                 TEXT NOT NULL DEFAULT 'disconnected',
    session_id             TEXT,
    server_id              TEXT,
    version                TEXT,
    capabilities           TEXT,
    health                 TEXT,
    rtt_ms                 DOUBLE PRECISION,
    last_heartbeat         BIGINT,
    connected_at           BIGINT,
    disconnected_at        BIGINT,
    created_at             BIGINT NOT NULL,
    updated_at             BIGINT NOT NULL
);
CREATE INDEX idx_agent_status ON docker_agents(status);
CREATE INDEX idx_agent_heartbeat ON docker_agents(last_heartbeat);
CREATE INDEX idx_agent_host ON docker_agents(host_id);

ALTER TABLE docker_hosts ADD COLUMN agent_id TEXT REFERENCES docker_agents(id) ON DELETE SET NULL;

CREATE TABLE agent_events (
    id          TEXT PRIMARY KEY,
    agent_id    TEXT REFERENCES docker_agents(id) ON DELETE CASCADE,
    event_type  TEXT NOT NULL,
    event_data  TEXT,
    created_at  BIGINT NOT NULL
);
CREATE INDEX idx_agent_events_created ON agent_events(created_at);
CREATE INDEX idx_agent_events_agent ON agent_events(agent_id, created_at);

CREATE TABLE docker_events (
    seq         BIGSERIAL PRIMARY KEY,
    host_id     TEXT NOT NULL REFERENCES docker_hosts(id) ON DELETE CASCADE,
    agent_id    TEXT,
    kind        TEXT NOT NULL,
    action      TEXT NOT NULL,
    actor_id    TEXT NOT NULL,
    attributes  TEXT,
    time_nano   BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX idx_docker_events_host ON docker_events(host_id, seq);
CREATE INDEX idx_docker_events_created ON docker_events(created_at);

CREATE TABLE audit_log (
    seq         BIGSERIAL PRIMARY KEY,
    at          BIGINT NOT NULL,
    actor_kind  TEXT NOT NULL,
    actor       TEXT NOT NULL,
    host_id     TEXT,
    action      TEXT NOT NULL,
    target      TEXT,
    outcome     TEXT NOT NULL,
    error_code  TEXT,
    detail      TEXT,
    source_ip   TEXT
);
CREATE INDEX idx_audit_at ON audit_log(at);
CREATE INDEX idx_audit_actor ON audit_log(actor, at);
CREATE INDEX idx_audit_host ON audit_log(host_id, at);

CREATE TABLE commands (
    id            TEXT PRIMARY KEY,
    host_id       TEXT,
    agent_id      TEXT,
    operation     TEXT NOT NULL,
    requested_by  TEXT,
    status        TEXT NOT NULL,
    error_code    TEXT,
    created_at    BIGINT NOT NULL,
    completed_at  BIGINT,
    duration_ms   BIGINT
);
CREATE INDEX idx_commands_host ON commands(host_id, created_at);
