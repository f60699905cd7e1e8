-- Run history kept by `inqubo monitor`. Portable SQL: the same migration runs on SQLite and
-- PostgreSQL. Times are milliseconds since the Unix epoch; bodies are JSON text.
CREATE TABLE runs (
    workflow    TEXT   NOT NULL,
    run_id      TEXT   NOT NULL,
    status      TEXT   NOT NULL,
    created_ms  BIGINT NOT NULL,
    updated_ms  BIGINT NOT NULL,
    finished_ms BIGINT,
    outcome     TEXT,
    PRIMARY KEY (workflow, run_id)
);

CREATE INDEX runs_by_update ON runs (updated_ms);

CREATE TABLE attempts (
    workflow    TEXT   NOT NULL,
    run_id      TEXT   NOT NULL,
    step        TEXT   NOT NULL,
    attempt     BIGINT NOT NULL,
    status      TEXT   NOT NULL,
    started_ms  BIGINT NOT NULL,
    finished_ms BIGINT,
    error       TEXT,
    output      TEXT,
    PRIMARY KEY (workflow, run_id, step, attempt)
);
