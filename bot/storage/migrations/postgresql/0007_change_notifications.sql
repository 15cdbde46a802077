-- Every process on the database hears of a change at once (LISTEN personabot_changes, bot.storage.postgres):
-- the tables themselves announce it, in the transaction that makes it (delivered at commit, never for a
-- change rolled back), whichever process, tool or person wrote it. The payload is the topic a listener
-- re-reads (bot.core.store.CHANGE_TOPICS): 'model' (the bot's own persona swapped by a retrain or rollback),
-- 'personas' (registered, removed, repointed, assigned) or 'schedules' (added, paused, removed, edited;
-- not a schedule's last run, which every post writes).
CREATE FUNCTION personabot_announce() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('personabot_changes', TG_ARGV[0]);
    RETURN NULL;
END;
$$;

CREATE TRIGGER personas_changed AFTER INSERT OR UPDATE OR DELETE ON personas
    FOR EACH STATEMENT EXECUTE FUNCTION personabot_announce('personas');
CREATE TRIGGER assignments_changed AFTER INSERT OR UPDATE OR DELETE ON assignments
    FOR EACH STATEMENT EXECUTE FUNCTION personabot_announce('personas');
CREATE TRIGGER schedules_changed AFTER INSERT OR DELETE
    OR UPDATE OF guild_id, name, cron, interval_s, timezone, targets, mode, paused, persona_id ON schedules
    FOR EACH STATEMENT EXECUTE FUNCTION personabot_announce('schedules');
CREATE TRIGGER model_changed AFTER INSERT OR UPDATE ON settings
    FOR EACH ROW WHEN (NEW.key = 'current_artifact') EXECUTE FUNCTION personabot_announce('model');
