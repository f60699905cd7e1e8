-- Run inputs (from `<workflow>.run.triggered`) and workflow definitions (from the registry),
-- so that `inqubo run` can show what each step received.
ALTER TABLE runs ADD COLUMN input TEXT;

CREATE TABLE workflows (
    workflow   TEXT   NOT NULL PRIMARY KEY,
    definition TEXT   NOT NULL,
    seen_ms    BIGINT NOT NULL
);
