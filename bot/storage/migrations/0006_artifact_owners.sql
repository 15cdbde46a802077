-- An artifact belongs to its server: what a server's persona retrains produce, and an artifact first registered
-- for a server when no global persona named it, is that server's; its admins register only their own server's
-- artifacts and those no server owns (the bot owners', published in MODELS_DIR or as global personas). Paths are
-- absolute and resolved, as personas store them. No row: no server owns it.
CREATE TABLE artifact_owners (
    path       TEXT PRIMARY KEY,
    guild_id   INTEGER NOT NULL,
    created_at TEXT NOT NULL
);

-- What existed before: an artifact that the personas of exactly one server named (as their artifact or the
-- one before it), and no global persona, is that server's. One named by several servers stays unowned.
INSERT INTO artifact_owners (path, guild_id, created_at)
SELECT path, min(guild_id), strftime('%Y-%m-%dT%H:%M:%S+00:00', 'now') FROM (
    SELECT artifact_path AS path, guild_id FROM personas
    UNION ALL
    SELECT previous_artifact_path AS path, guild_id FROM personas WHERE previous_artifact_path IS NOT NULL
) GROUP BY path
HAVING count(DISTINCT coalesce(guild_id, 0)) = 1 AND min(guild_id) IS NOT NULL;

-- A server's listing and autocomplete read its own rows and the global ones only.
CREATE INDEX personas_by_guild ON personas (guild_id, name COLLATE NOCASE);
