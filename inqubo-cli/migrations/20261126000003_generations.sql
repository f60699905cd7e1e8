-- Run generations: a run ends once per generation (`run.succeeded`, `run.failed` or
-- `run.cancelled`), and a resume starts the next one. `runs.generation` is the latest
-- generation seen, and the run's status is that of the latest generation; `run_generations`
-- keeps how and when each generation ended. Runs and attempts recorded before are generation 1.
ALTER TABLE runs ADD COLUMN generation BIGINT NOT NULL DEFAULT 1;

-- Each attempt's generation, and why it failed for good (`fatal`, `retries_exhausted`...) or
-- was skipped (`run_failed`, `run_cancelled`: its run had ended, so the step never ran).
ALTER TABLE attempts ADD COLUMN generation BIGINT NOT NULL DEFAULT 1;
ALTER TABLE attempts ADD COLUMN reason TEXT;

CREATE TABLE run_generations (
    workflow   TEXT   NOT NULL,
    run_id     TEXT   NOT NULL,
    generation BIGINT NOT NULL,
    status     TEXT   NOT NULL,
    ended_ms   BIGINT NOT NULL,
    outcome    TEXT,
    PRIMARY KEY (workflow, run_id, generation)
);

INSERT INTO run_generations (workflow, run_id, generation, status, ended_ms, outcome)
SELECT workflow, run_id, 1, status, finished_ms, outcome FROM runs
WHERE finished_ms IS NOT NULL AND status IN ('succeeded', 'failed');
