-- Issue 12: a host names only an agent that is bound to it and not revoked. Earlier versions
-- left a revoked agent named by its host, so re-enrolling that agent for another host routed
-- the first host's traffic to it. Kept identical in both dialects.
UPDATE docker_hosts SET agent_id = NULL
WHERE agent_id IS NOT NULL
  AND NOT EXISTS (
    SELECT 1 FROM docker_agents a
    WHERE a.id = docker_hosts.agent_id AND a.revoked_at IS NULL AND a.host_id = docker_hosts.id
  );
