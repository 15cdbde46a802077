-- Personas that change: a retrain of one persona swaps its artifact and keeps the one before (for its
-- rollback); a persona may show an avatar (an image URL) where it speaks through a webhook; a schedule may
-- name the persona that writes its posts (NULL: whoever is assigned where each post goes).
ALTER TABLE personas ADD COLUMN previous_artifact_path TEXT;   -- absolute; NULL: never retrained here
ALTER TABLE personas ADD COLUMN avatar_url TEXT;
ALTER TABLE schedules ADD COLUMN persona_id INTEGER REFERENCES personas (id) ON DELETE SET NULL;
