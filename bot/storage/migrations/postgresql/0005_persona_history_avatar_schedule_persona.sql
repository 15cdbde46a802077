-- Persona history, avatars and a schedule's persona, as ../0005_persona_history_avatar_schedule_persona.sql says.
ALTER TABLE personas ADD COLUMN previous_artifact_path TEXT;
ALTER TABLE personas ADD COLUMN avatar_url TEXT;
ALTER TABLE schedules ADD COLUMN persona_id BIGINT REFERENCES personas (id) ON DELETE SET NULL;
