-- Several personas in one bot: a registry of persona artifacts and which one speaks where.

-- A persona: a name and an artifact directory (a whole model, or a LoRA adapter that names its base), owned by
-- a guild (whose admins govern it) or global (guild_id NULL: the bot's owners'). Names are unique per owner
-- and case-insensitively (a webhook shows the name: "Alice" and "alice" in one server would be confusing), as
-- schedule names are per owner since 0003. `generation` holds default sampling settings over the artifact's
-- own (a JSON object, e.g. {"temperature": 0.7}).
CREATE TABLE personas (
    id            INTEGER PRIMARY KEY,
    guild_id      INTEGER,                -- the owning guild; NULL: global (the bot's owners)
    name          TEXT NOT NULL,
    artifact_path TEXT NOT NULL,          -- absolute
    generation    TEXT NOT NULL DEFAULT '{}',
    created_at    TEXT NOT NULL
);
CREATE UNIQUE INDEX personas_one_name_per_owner ON personas (coalesce(guild_id, 0), name COLLATE NOCASE);

-- Which persona speaks where: one for the whole bot (scope 'bot', no id), one per guild, one per channel; the
-- nearest one wins (bot/personas.py). `guild_id` is the guild the assignment belongs to (a channel's guild),
-- so a guild's admins see and govern their guild's assignments only. Removing a persona removes its
-- assignments.
CREATE TABLE assignments (
    id         INTEGER PRIMARY KEY,
    scope      TEXT NOT NULL CHECK (scope IN ('bot', 'guild', 'channel')),
    scope_id   INTEGER,                   -- the guild's or channel's id; NULL for 'bot'
    guild_id   INTEGER,                   -- the guild it belongs to; NULL for 'bot'
    persona_id INTEGER NOT NULL REFERENCES personas (id) ON DELETE CASCADE,
    created_at TEXT NOT NULL,
    CHECK ((scope = 'bot') = (scope_id IS NULL)),
    CHECK ((scope = 'bot') = (guild_id IS NULL))
);
CREATE UNIQUE INDEX assignments_one_per_place ON assignments (scope, coalesce(scope_id, 0));
CREATE INDEX assignments_by_persona ON assignments (persona_id);
