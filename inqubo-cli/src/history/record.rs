//! Recording events into the run history: what each lifecycle event does to its run and to
//! the step attempt it reports.
//!
//! A run ends once per generation (`run.succeeded`, `run.failed` or `run.cancelled`), and a
//! resume starts the next generation. The history follows the latest generation: a run's
//! status is what its latest generation's events say; an event of an older generation that
//! arrives late never moves it back; and within a generation, a run that ended stays ended
//! (the branches still running when it failed go on reporting). The monitor may see a run
//! first anywhere (the run started before the monitor, or the monitor did not follow its
//! workflow's triggers yet): whatever event comes first creates the run, under the workflow its
//! routing key names, and later events complete it.

use std::time::Duration;

use inqubo::{EventKind, FailureReason, LifecycleEvent, SkippedBody};
use sqlx::{AnyPool, Row};

use super::now_ms;

/// The status an event gives its run, and whether it says the run's generation has ended.
fn run_status(event: &LifecycleEvent) -> (&'static str, bool) {
    match event.kind {
        EventKind::RunSucceeded => ("succeeded", true),
        EventKind::RunFailed => ("failed", true),
        EventKind::RunCancelled => ("cancelled", true),
        // A step is skipped only after its run's generation ended, for the reason it gives:
        // the run has ended even when the monitor never saw the terminal event.
        EventKind::Skipped => match serde_json::from_value::<SkippedBody>(event.body.clone()) {
            Ok(SkippedBody {
                reason: FailureReason::RunCancelled,
                ..
            }) => ("cancelled", true),
            Ok(SkippedBody {
                reason: FailureReason::RunFailed,
                ..
            }) => ("failed", true),
            _ => ("running", false),
        },
        EventKind::Retrying => ("retrying", false),
        _ => ("running", false),
    }
}

/// Records one event; for the end of a step attempt, returns how long the attempt took as the
/// monitor saw it (from its `started` event, when there was one).
pub(crate) async fn record(
    pool: &AnyPool,
    event: &LifecycleEvent,
) -> anyhow::Result<Option<Duration>> {
    let workflow = event.workflow.as_str();
    let run = event.run_id.as_str();
    let generation = i64::from(event.generation);
    let now = now_ms();
    let body = event.body.to_string();
    if event.kind == EventKind::RunTriggered {
        sqlx::query(
            "INSERT INTO runs (workflow, run_id, status, created_ms, updated_ms, input)
             VALUES ($1, $2, 'running', $3, $3, $4)
             ON CONFLICT (workflow, run_id) DO UPDATE SET input = excluded.input",
        )
        .bind(workflow)
        .bind(run)
        .bind(now)
        .bind(body)
        .execute(pool)
        .await?;
        return Ok(None);
    }
    if event.kind == EventKind::RunDuplicate {
        // A refused trigger changes nothing of the run it names.
        return Ok(None);
    }
    let (run_status, ends) = run_status(event);
    // Only a run's terminal event carries an outcome: below, a non-null `excluded.outcome`
    // tells it from a skipped step, which says the generation ended but not how it went.
    let outcome = event.kind.ends_run().then(|| body.clone());
    // `excluded` is this event: a newer generation takes over the run (a resume reopens it);
    // an older one changes nothing; in the same generation, an ended run stays ended, except
    // that its terminal event fills in the outcome.
    sqlx::query(
        "INSERT INTO runs (workflow, run_id, status, created_ms, updated_ms, finished_ms, outcome, generation)
         VALUES ($1, $2, $3, $4, $4, $5, $6, $7)
         ON CONFLICT (workflow, run_id) DO UPDATE SET
           status = CASE
             WHEN excluded.generation > runs.generation THEN excluded.status
             WHEN excluded.generation < runs.generation THEN runs.status
             WHEN runs.status NOT IN ('succeeded', 'failed', 'cancelled')
               OR excluded.outcome IS NOT NULL THEN excluded.status
             ELSE runs.status END,
           finished_ms = CASE
             WHEN excluded.generation > runs.generation THEN excluded.finished_ms
             WHEN excluded.generation < runs.generation THEN runs.finished_ms
             ELSE COALESCE(runs.finished_ms, excluded.finished_ms) END,
           outcome = CASE
             WHEN excluded.generation > runs.generation THEN excluded.outcome
             WHEN excluded.generation < runs.generation THEN runs.outcome
             ELSE COALESCE(excluded.outcome, runs.outcome) END,
           generation = CASE
             WHEN excluded.generation > runs.generation THEN excluded.generation
             ELSE runs.generation END,
           updated_ms = excluded.updated_ms",
    )
    .bind(workflow)
    .bind(run)
    .bind(run_status)
    .bind(now)
    .bind(ends.then_some(now))
    .bind(outcome.clone())
    .bind(generation)
    .execute(pool)
    .await?;
    if event.kind.ends_run() {
        // Exactly one terminal event per generation; a redelivered copy changes nothing.
        sqlx::query(
            "INSERT INTO run_generations (workflow, run_id, generation, status, ended_ms, outcome)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (workflow, run_id, generation) DO NOTHING",
        )
        .bind(workflow)
        .bind(run)
        .bind(generation)
        .bind(run_status)
        .bind(now)
        .bind(outcome)
        .execute(pool)
        .await?;
    }
    let Some(step) = &event.step else {
        return Ok(None);
    };
    let attempt = i64::from(event.attempt.unwrap_or(0));
    let error = || event.body["error"].as_str().map(str::to_owned);
    let reason = || event.body["reason"].as_str().map(str::to_owned);
    let (status, error, output, reason) = match event.kind {
        EventKind::Started => ("started", None, None, None),
        EventKind::Succeeded => ("succeeded", None, Some(body), None),
        EventKind::Retrying => ("retrying", error(), None, None),
        EventKind::Failed => ("failed", error(), None, reason()),
        EventKind::Skipped => ("skipped", None, None, reason()),
        _ => return Ok(None),
    };
    let finished = (status != "started").then_some(now);
    if let Some(element) = event.element {
        let row = ElementRow {
            workflow,
            run,
            step: step.as_str(),
            element,
            attempt,
            generation,
            status,
            now,
            finished,
            error,
        };
        return record_element(pool, row).await;
    }
    // Attempt numbers go on across generations (a resume sends the next attempt), so an
    // attempt is one row. Its events may come in any order: `started` never undoes an
    // outcome, and an event of another generation than the row's never mixes into it.
    let row = sqlx::query(
        "INSERT INTO attempts (workflow, run_id, step, attempt, status, started_ms, finished_ms,
                               error, output, generation, reason)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (workflow, run_id, step, attempt) DO UPDATE SET
           status = CASE
             WHEN excluded.generation > attempts.generation THEN excluded.status
             WHEN excluded.generation < attempts.generation OR excluded.status = 'started'
               THEN attempts.status
             ELSE excluded.status END,
           started_ms = CASE
             WHEN excluded.generation > attempts.generation THEN excluded.started_ms
             ELSE attempts.started_ms END,
           finished_ms = CASE
             WHEN excluded.generation > attempts.generation THEN excluded.finished_ms
             WHEN excluded.generation < attempts.generation THEN attempts.finished_ms
             ELSE COALESCE(excluded.finished_ms, attempts.finished_ms) END,
           error = CASE
             WHEN excluded.generation > attempts.generation THEN excluded.error
             WHEN excluded.generation < attempts.generation THEN attempts.error
             ELSE COALESCE(excluded.error, attempts.error) END,
           output = CASE
             WHEN excluded.generation > attempts.generation THEN excluded.output
             WHEN excluded.generation < attempts.generation THEN attempts.output
             ELSE COALESCE(excluded.output, attempts.output) END,
           reason = CASE
             WHEN excluded.generation > attempts.generation THEN excluded.reason
             WHEN excluded.generation < attempts.generation THEN attempts.reason
             ELSE COALESCE(excluded.reason, attempts.reason) END,
           generation = CASE
             WHEN excluded.generation > attempts.generation THEN excluded.generation
             ELSE attempts.generation END
         RETURNING started_ms, finished_ms",
    )
    .bind(workflow)
    .bind(run)
    .bind(step.as_str())
    .bind(attempt)
    .bind(status)
    .bind(now)
    .bind(finished)
    .bind(error)
    .bind(output)
    .bind(generation)
    .bind(reason)
    .fetch_one(pool)
    .await?;
    let took = match (row.get::<i64, _>(0), row.get::<Option<i64>, _>(1)) {
        (start, Some(end)) if !matches!(status, "started" | "skipped") && end >= start => Some(
            Duration::from_millis(u64::try_from(end - start).unwrap_or(0)),
        ),
        _ => None,
    };
    Ok(took)
}

/// What one event of a map element says of it.
struct ElementRow<'a> {
    workflow: &'a str,
    run: &'a str,
    step: &'a str,
    element: inqubo::protocol::Element,
    attempt: i64,
    generation: i64,
    status: &'static str,
    now: i64,
    finished: Option<i64>,
    error: Option<String>,
}

/// Records an event of a map element: its row holds its latest attempt (a later attempt or
/// generation replaces it; `started` never undoes the outcome of the same attempt). Returns how
/// long the attempt took, as [`record`] does.
async fn record_element(pool: &AnyPool, row: ElementRow<'_>) -> anyhow::Result<Option<Duration>> {
    let stored = sqlx::query(
        "INSERT INTO map_elements (workflow, run_id, step, element, size, attempt, generation,
                                   status, started_ms, finished_ms, error)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (workflow, run_id, step, element) DO UPDATE SET
           status = CASE
             WHEN excluded.attempt > map_elements.attempt
               OR excluded.generation > map_elements.generation THEN excluded.status
             WHEN excluded.attempt < map_elements.attempt
               OR excluded.generation < map_elements.generation
               OR excluded.status = 'started' THEN map_elements.status
             ELSE excluded.status END,
           started_ms = CASE
             WHEN excluded.attempt > map_elements.attempt
               OR excluded.generation > map_elements.generation THEN excluded.started_ms
             ELSE map_elements.started_ms END,
           finished_ms = CASE
             WHEN excluded.attempt > map_elements.attempt
               OR excluded.generation > map_elements.generation THEN excluded.finished_ms
             WHEN excluded.attempt < map_elements.attempt
               OR excluded.generation < map_elements.generation THEN map_elements.finished_ms
             ELSE COALESCE(excluded.finished_ms, map_elements.finished_ms) END,
           error = CASE
             WHEN excluded.attempt >= map_elements.attempt
               AND excluded.generation >= map_elements.generation
               THEN COALESCE(excluded.error, map_elements.error)
             ELSE map_elements.error END,
           attempt = CASE WHEN excluded.attempt > map_elements.attempt
             THEN excluded.attempt ELSE map_elements.attempt END,
           generation = CASE WHEN excluded.generation > map_elements.generation
             THEN excluded.generation ELSE map_elements.generation END
         RETURNING started_ms, finished_ms",
    )
    .bind(row.workflow)
    .bind(row.run)
    .bind(row.step)
    .bind(i64::from(row.element.index))
    .bind(i64::from(row.element.size))
    .bind(row.attempt)
    .bind(row.generation)
    .bind(row.status)
    .bind(row.now)
    .bind(row.finished)
    .bind(row.error)
    .fetch_one(pool)
    .await?;
    let took = match (stored.get::<i64, _>(0), stored.get::<Option<i64>, _>(1)) {
        (start, Some(end)) if !matches!(row.status, "started" | "skipped") && end >= start => Some(
            Duration::from_millis(u64::try_from(end - start).unwrap_or(0)),
        ),
        _ => None,
    };
    Ok(took)
}

/// Deletes runs that finished more than `retention` ago, with their attempts and generations.
pub(crate) async fn expire(pool: &AnyPool, retention: Duration) -> anyhow::Result<u64> {
    let cutoff = now_ms() - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    for statement in [
        "DELETE FROM map_elements WHERE EXISTS (SELECT 1 FROM runs r
           WHERE r.workflow = map_elements.workflow AND r.run_id = map_elements.run_id
           AND r.finished_ms IS NOT NULL AND r.finished_ms < $1)",
        "DELETE FROM attempts WHERE EXISTS (SELECT 1 FROM runs r WHERE r.workflow = attempts.workflow
           AND r.run_id = attempts.run_id AND r.finished_ms IS NOT NULL AND r.finished_ms < $1)",
        "DELETE FROM run_generations WHERE EXISTS (SELECT 1 FROM runs r
           WHERE r.workflow = run_generations.workflow AND r.run_id = run_generations.run_id
           AND r.finished_ms IS NOT NULL AND r.finished_ms < $1)",
    ] {
        sqlx::query(statement).bind(cutoff).execute(pool).await?;
    }
    let deleted =
        sqlx::query("DELETE FROM runs WHERE finished_ms IS NOT NULL AND finished_ms < $1")
            .bind(cutoff)
            .execute(pool)
            .await?;
    Ok(deleted.rows_affected())
}

#[cfg(test)]
mod tests;
