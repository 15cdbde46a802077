-- Scheduled posts: the schedules and every post, recorded before it is sent.

CREATE TABLE schedules (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    cron       TEXT,                      -- a crontab line, or
    interval_s INTEGER,                   -- every so many seconds
    timezone   TEXT NOT NULL DEFAULT 'UTC',
    targets    TEXT NOT NULL,             -- JSON list, e.g. ["twitter", "discord:123"]
    mode       TEXT NOT NULL DEFAULT 'confession',
    paused     INTEGER NOT NULL DEFAULT 0,
    last_run   TEXT,
    created_at TEXT NOT NULL
);

CREATE TABLE posts (
    id          INTEGER PRIMARY KEY,
    schedule_id INTEGER REFERENCES schedules (id) ON DELETE SET NULL,
    slot        TEXT,                     -- the scheduled time this post is for
    target      TEXT NOT NULL,
    text        TEXT,
    status      TEXT NOT NULL,            -- pending, posted, failed, skipped, unknown
    remote_id   TEXT,
    error       TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
-- One post per schedule, slot and target: two processes on one database cannot both claim a slot.
CREATE UNIQUE INDEX posts_one_per_slot ON posts (schedule_id, slot, target);
