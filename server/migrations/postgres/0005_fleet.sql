-- Fleets: labels on hosts, saved groups, and rollouts over many hosts (bulk operations
-- first; stacks and agent updates reuse the two rollout tables with their own `kind`).
-- Kept identical to ../sqlite/0005_fleet.sql.

-- The admin's labels and the labels the host's agent reported when it authenticated, each a
-- JSON object of strings (NULL: none). Kept apart so that neither overwrites the other.
ALTER TABLE docker_hosts ADD COLUMN labels TEXT;
ALTER TABLE docker_hosts ADD COLUMN agent_labels TEXT;

-- A saved group is a stored selector. Its id never changes (a rename keeps it): a role scoped
-- to a group later names the group by this id.
CREATE TABLE host_groups (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    selector    TEXT NOT NULL,
    description TEXT,
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

-- A rollout: one job run over many hosts with a parallelism and a failure budget. `summary`
-- is what the API shows (operations, selector, group; never params); `spec_enc` is the
-- job's own document, params included, encrypted with the at-rest key. `created_by`,
-- `created_role` and `token_id` are the principal its commands run for, after a restart
-- too. `runner` is the server_id that drives it.
CREATE TABLE bulk_operations (
    id                  TEXT PRIMARY KEY,
    kind                TEXT NOT NULL,
    state               TEXT NOT NULL CHECK (state IN ('running', 'succeeded', 'failed', 'cancelled')),
    summary             TEXT NOT NULL,
    spec_enc            TEXT NOT NULL,
    max_parallel        BIGINT NOT NULL,
    max_failures        BIGINT NOT NULL,
    total               BIGINT NOT NULL,
    created_by          TEXT NOT NULL,
    created_role        TEXT NOT NULL,
    token_id            TEXT NOT NULL,
    source_ip           TEXT,
    runner              TEXT,
    cancel_requested_at BIGINT,
    cancelled_by        TEXT,
    reason              TEXT,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    finished_at         BIGINT
);
CREATE INDEX idx_bulk_operations_state ON bulk_operations(state);
CREATE INDEX idx_bulk_operations_created ON bulk_operations(created_at, id);

-- One row per host of a rollout, in rollout order (`position`). `command_ids` is a JSON array,
-- one id per step started; `result` the outcome document of the host's last command.
CREATE TABLE bulk_targets (
    bulk_id     TEXT NOT NULL REFERENCES bulk_operations(id) ON DELETE CASCADE,
    position    BIGINT NOT NULL,
    host_id     TEXT NOT NULL,
    host_name   TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('pending', 'running', 'queued', 'succeeded', 'failed', 'skipped', 'cancelled')),
    command_ids TEXT NOT NULL,
    result      TEXT,
    started_at  BIGINT,
    finished_at BIGINT,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (bulk_id, position)
);
CREATE UNIQUE INDEX idx_bulk_targets_host ON bulk_targets(bulk_id, host_id);
CREATE INDEX idx_bulk_targets_state ON bulk_targets(bulk_id, state, position);
