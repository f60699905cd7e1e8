-- Map elements: a map step runs once per element of its parent's list, and its events carry
-- `map-index` and `map-size`. One row per element holds its latest attempt, so that a run
-- shows a map as one step with counts (succeeded / running / failed) however many elements
-- it has; the `attempts` table keeps the run's other steps.
CREATE TABLE map_elements (
    workflow    TEXT   NOT NULL,
    run_id      TEXT   NOT NULL,
    step        TEXT   NOT NULL,
    element     BIGINT NOT NULL,
    size        BIGINT NOT NULL,
    attempt     BIGINT NOT NULL,
    generation  BIGINT NOT NULL,
    status      TEXT   NOT NULL,
    started_ms  BIGINT NOT NULL,
    finished_ms BIGINT,
    error       TEXT,
    PRIMARY KEY (workflow, run_id, step, element)
);
