-- Tenancy and run progress, as ../0003_guild_tenancy_and_run_progress.sql says. PostgreSQL changes a
-- constraint in place: no table rebuild here.
ALTER TABLE schedules ADD COLUMN guild_id BIGINT;
ALTER TABLE schedules DROP CONSTRAINT schedules_name_key;
CREATE UNIQUE INDEX schedules_one_name_per_owner ON schedules (coalesce(guild_id, 0), name);

ALTER TABLE posts ADD COLUMN guild_id BIGINT;

ALTER TABLE training_runs ADD COLUMN progress_channel_id BIGINT;
ALTER TABLE training_runs ADD COLUMN progress_message_id BIGINT;
ALTER TABLE training_runs ADD COLUMN out_path TEXT;
