-- Issue 18: several server replicas on one PostgreSQL database. Kept identical in both
-- dialects (SQLite runs one replica, with the same tables).
--
-- One row per replica id. `epoch` grows by one at every start of that id, so a claim made by
-- a previous life of the replica (a process that was replaced) is refused. A replica is
-- alive while `heartbeat_at + 3 * heartbeat_interval_ms` is in the future.
CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    advertise_url TEXT NOT NULL,
    region TEXT,
    epoch BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    heartbeat_interval_ms BIGINT NOT NULL
);

-- Which replica holds each agent's session: claimed at the handshake, released at close.
-- A claim counts only while its replica is alive and still in the claim's epoch.
CREATE TABLE agent_presence (
    agent_ref TEXT PRIMARY KEY REFERENCES docker_agents(id) ON DELETE CASCADE,
    host_id TEXT,
    replica_id TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    session_id TEXT NOT NULL,
    claimed_at BIGINT NOT NULL
);
CREATE INDEX agent_presence_replica ON agent_presence (replica_id);
CREATE INDEX agent_presence_host ON agent_presence (host_id);

-- The region a host is in (an admin's PATCH), shown beside where its agent is connected.
ALTER TABLE docker_hosts ADD COLUMN region TEXT;

-- The cluster credential replicas present to each other when one forwards a request to the
-- replica holding an agent: a random secret made once by the first replica that starts,
-- stored encrypted with the at-rest key (`v1:`, see crypto.rs). One row, id 1.
CREATE TABLE cluster_secret (
    id BIGINT PRIMARY KEY,
    secret_enc TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
