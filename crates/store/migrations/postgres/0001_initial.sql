-- Times are Unix milliseconds (BIGINT) so both backends share one model.
CREATE TABLE users (
    id           TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    gender       TEXT NOT NULL DEFAULT 'unspecified',
    selfie_url   TEXT,
    video_url    TEXT,
    bio          TEXT NOT NULL DEFAULT '',
    socials      TEXT NOT NULL DEFAULT '{}',  -- a JSON object, validated by the API
    created_at   BIGINT NOT NULL,
    last_active  BIGINT NOT NULL,
    banned       BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE sessions (
    id          TEXT PRIMARY KEY,
    token_hash  BYTEA NOT NULL UNIQUE,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT,
    user_agent  TEXT,
    ip          TEXT
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expires ON sessions (expires_at);

CREATE TABLE calls (
    id          TEXT PRIMARY KEY,
    user_a      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    user_b      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    started_at  BIGINT NOT NULL,
    ended_at    BIGINT,
    end_reason  TEXT
);
CREATE INDEX calls_user_a ON calls (user_a, started_at DESC);
CREATE INDEX calls_user_b ON calls (user_b, started_at DESC);

-- A pair is stored once, with user_a < user_b.
CREATE TABLE cooldowns (
    user_a  TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    user_b  TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    until   BIGINT NOT NULL,
    PRIMARY KEY (user_a, user_b)
);
CREATE INDEX cooldowns_until ON cooldowns (until);

CREATE TABLE blocks (
    blocker     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    blocked     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (blocker, blocked)
);

CREATE TABLE reports (
    id          TEXT PRIMARY KEY,
    reporter    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    reported    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    reason      TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
