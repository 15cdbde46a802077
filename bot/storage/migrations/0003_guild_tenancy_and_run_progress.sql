-- Tenancy: a schedule (and each post) belongs to one guild, whose admins govern it, or to no guild: then it
-- is global and the bot's owners govern it. Schedule names are unique per owner, not across every server
-- (one server's names must not be visible to, or block, another). SQLite cannot change a column's UNIQUE
-- constraint in place, so the table is rebuilt (the store runs migrations with foreign keys off, as SQLite's
-- documented procedure asks, and checks them afterwards).
CREATE TABLE schedules_new (
    id         INTEGER PRIMARY KEY,
    guild_id   INTEGER,                   -- the owning guild; NULL: global (the bot's owners)
    name       TEXT NOT NULL,
    cron       TEXT,
    interval_s INTEGER,
    timezone   TEXT NOT NULL DEFAULT 'UTC',
    targets    TEXT NOT NULL,
    mode       TEXT NOT NULL DEFAULT 'confession',
    paused     INTEGER NOT NULL DEFAULT 0,
    last_run   TEXT,
    created_at TEXT NOT NULL
);
INSERT INTO schedules_new (id, guild_id, name, cron, interval_s, timezone, targets, mode, paused, last_run, created_at)
    SELECT id, NULL, name, cron, interval_s, timezone, targets, mode, paused, last_run, created_at FROM schedules;
DROP TABLE schedules;
ALTER TABLE schedules_new RENAME TO schedules;
CREATE UNIQUE INDEX schedules_one_name_per_owner ON schedules (coalesce(guild_id, 0), name);

ALTER TABLE posts ADD COLUMN guild_id INTEGER;

-- A retrain's progress is shown in a message the bot owns (interaction tokens expire after 15 minutes), and
-- its output folder is known from the start: a bot that restarts mid-retrain closes the run, says so in that
-- message, and removes what the run left half-written.
ALTER TABLE training_runs ADD COLUMN progress_channel_id INTEGER;
ALTER TABLE training_runs ADD COLUMN progress_message_id INTEGER;
ALTER TABLE training_runs ADD COLUMN out_path TEXT;
