-- The blind quiz's results, as ../0008_quiz_results.sql says.
CREATE TABLE quiz_results (
    artifact_path TEXT PRIMARY KEY,
    rounds        BIGINT NOT NULL CHECK (rounds >= 0),
    fooled        BIGINT NOT NULL CHECK (fooled >= 0 AND fooled <= rounds),
    updated_at    TEXT NOT NULL
);
