-- PostgreSQL's tables announce their changes to every process (postgresql/0007_change_notifications.sql).
-- SQLite has no way to tell another process: its processes, all on one machine, look every 15 s
-- (bot.jobs.model_watch, bot.jobs.scheduler). Nothing changes here; the number keeps both schemas in step.
SELECT 1;
