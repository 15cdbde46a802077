-- The blind quiz's results (bot.core.quiz), kept per artifact: a persona's every model has its own, and
-- /persona info shows those of the model it speaks with. Counts only: who answered what is not kept.
CREATE TABLE quiz_results (
    artifact_path TEXT PRIMARY KEY,
    rounds        INTEGER NOT NULL CHECK (rounds >= 0),
    fooled        INTEGER NOT NULL CHECK (fooled >= 0 AND fooled <= rounds),
    updated_at    TEXT NOT NULL
);
