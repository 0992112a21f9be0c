-- Issue 15: agents update themselves. The target triple an agent reports at auth picks the
-- release it updates to; each attempt to update one agent is a row of agent_updates, kept
-- across restarts (the agent reports the outcome again at its next auth). `origin` names
-- the rollout that started it (NULL for a single update). Kept identical in both dialects.
ALTER TABLE docker_agents ADD COLUMN target TEXT;
CREATE TABLE agent_updates (
    id TEXT PRIMARY KEY,
    agent_ref TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    version TEXT NOT NULL,
    target TEXT NOT NULL,
    from_version TEXT,
    state TEXT NOT NULL,
    bytes BIGINT,
    error TEXT,
    origin TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX idx_agent_updates_agent ON agent_updates(agent_ref, created_at);
CREATE INDEX idx_agent_updates_origin ON agent_updates(origin);
