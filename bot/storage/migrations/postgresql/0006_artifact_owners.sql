-- Artifact owners, as ../0006_artifact_owners.sql says, with the same rule for what existed before.
CREATE TABLE artifact_owners (
    path       TEXT PRIMARY KEY,
    guild_id   BIGINT NOT NULL,
    created_at TEXT NOT NULL
);

INSERT INTO artifact_owners (path, guild_id, created_at)
SELECT path, min(guild_id), to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"+00:00"') FROM (
    SELECT artifact_path AS path, guild_id FROM personas
    UNION ALL
    SELECT previous_artifact_path AS path, guild_id FROM personas WHERE previous_artifact_path IS NOT NULL
) AS named GROUP BY path
HAVING count(DISTINCT coalesce(guild_id, 0)) = 1 AND min(guild_id) IS NOT NULL;

-- A server's listing and autocomplete read its own rows and the global ones only; in the "C" collation, so
-- that a name prefix (LIKE 'abc%') can use the index and names sort as in SQLite, whatever the database's
-- own collation.
CREATE INDEX personas_by_guild ON personas (guild_id, (lower(name) COLLATE "C"));
