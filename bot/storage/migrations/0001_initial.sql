-- The first schema: what the bot remembers between restarts.

-- Messages seen in channels: the context windows survive a restart, and (when enabled) retraining can
-- learn from them. Deleted with /forget-me.
CREATE TABLE channel_messages (
    id          INTEGER PRIMARY KEY,
    guild_id    INTEGER,
    channel_id  INTEGER NOT NULL,
    message_id  INTEGER UNIQUE,
    author_id   INTEGER NOT NULL,
    author_name TEXT NOT NULL,
    is_bot      INTEGER NOT NULL DEFAULT 0,
    content     TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE INDEX channel_messages_by_channel ON channel_messages (channel_id, id);
CREATE INDEX channel_messages_by_author ON channel_messages (author_id);

-- People who asked to be forgotten: never stored again, never trained on (by id here, and by every name
-- they were known by in exports).
CREATE TABLE opt_outs (
    user_id    INTEGER NOT NULL,
    user_name  TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (user_id, user_name)
);

-- Every retraining: who asked, with what, how it ended.
CREATE TABLE training_runs (
    id            INTEGER PRIMARY KEY,
    requested_by  INTEGER,
    speaker       TEXT,
    epochs        REAL,
    status        TEXT NOT NULL,          -- running, done, failed, cancelled, rejected
    artifact_path TEXT,
    metrics       TEXT,                   -- JSON
    error         TEXT,
    started_at    TEXT NOT NULL,
    finished_at   TEXT
);

-- Key-value settings changed at run time (for example which channels the bot talks in).
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
