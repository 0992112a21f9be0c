-- Issue 17: people sign in to the web UI. A user may have a password (argon2id, PHC string);
-- browser sessions and one-time sign-in links are stored only as SHA-256 hashes of their
-- secrets. Kept identical in both dialects.
ALTER TABLE users ADD COLUMN password_hash TEXT;
ALTER TABLE users ADD COLUMN password_changed_at BIGINT;

CREATE TABLE user_sessions (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    session_hash  TEXT NOT NULL UNIQUE,
    created_at    BIGINT NOT NULL,
    last_seen_at  BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    revoked_at    BIGINT,
    source_ip     TEXT,
    user_agent    TEXT
);
CREATE INDEX idx_user_sessions_user ON user_sessions(user_id);

CREATE TABLE signin_links (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    link_hash   TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT
);
