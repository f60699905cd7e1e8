//! Recording events into the run history: what each lifecycle event does to its run and to
//! the step attempt it reports.

use std::time::Duration;

use inqubo::{EventKind, LifecycleEvent};
use sqlx::{AnyPool, Row};

use super::now_ms;

/// Records one event; for the end of a step attempt, returns how long the attempt took as the
/// monitor saw it (from its `started` event, when there was one).
pub(crate) async fn record(
    pool: &AnyPool,
    event: &LifecycleEvent,
) -> anyhow::Result<Option<Duration>> {
    let workflow = event.workflow.as_str();
    let run = event.run_id.as_str();
    let now = now_ms();
    let body = event.body.to_string();
    let run_status = match event.kind {
        EventKind::RunSucceeded => "succeeded",
        EventKind::RunFailed => "failed",
        EventKind::Retrying => "retrying",
        _ => "running",
    };
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
    if event.kind.is_run_event() {
        sqlx::query(
            "INSERT INTO runs (workflow, run_id, status, created_ms, updated_ms, finished_ms, outcome)
             VALUES ($1, $2, $3, $4, $4, $4, $5)
             ON CONFLICT (workflow, run_id) DO UPDATE SET
               status = excluded.status, updated_ms = excluded.updated_ms,
               finished_ms = excluded.finished_ms, outcome = excluded.outcome",
        )
        .bind(workflow)
        .bind(run)
        .bind(run_status)
        .bind(now)
        .bind(body)
        .execute(pool)
        .await?;
        return Ok(None);
    }
    sqlx::query(
        "INSERT INTO runs (workflow, run_id, status, created_ms, updated_ms)
         VALUES ($1, $2, $3, $4, $4)
         ON CONFLICT (workflow, run_id) DO UPDATE SET
           status = CASE WHEN runs.status IN ('succeeded', 'failed') THEN runs.status ELSE excluded.status END,
           updated_ms = excluded.updated_ms",
    )
    .bind(workflow)
    .bind(run)
    .bind(run_status)
    .bind(now)
    .execute(pool)
    .await?;
    let Some(step) = &event.step else {
        return Ok(None);
    };
    let attempt = i64::from(event.attempt.unwrap_or(0));
    let (status, error, output, finished) = match event.kind {
        EventKind::Started => ("started", None, None, None),
        EventKind::Succeeded => ("succeeded", None, Some(body), Some(now)),
        EventKind::Retrying => (
            "retrying",
            event.body["error"].as_str().map(str::to_owned),
            None,
            Some(now),
        ),
        EventKind::Failed => (
            "failed",
            event.body["error"].as_str().map(str::to_owned),
            None,
            Some(now),
        ),
        _ => return Ok(None),
    };
    let row = sqlx::query(
        "INSERT INTO attempts (workflow, run_id, step, attempt, status, started_ms, finished_ms, error, output)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (workflow, run_id, step, attempt) DO UPDATE SET
           status = CASE WHEN excluded.status = 'started' THEN attempts.status ELSE excluded.status END,
           finished_ms = COALESCE(excluded.finished_ms, attempts.finished_ms),
           error = COALESCE(excluded.error, attempts.error),
           output = COALESCE(excluded.output, attempts.output)
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
    .fetch_one(pool)
    .await?;
    let took = match (row.get::<i64, _>(0), row.get::<Option<i64>, _>(1)) {
        (start, Some(end)) if status != "started" && end >= start => Some(Duration::from_millis(
            u64::try_from(end - start).unwrap_or(0),
        )),
        _ => None,
    };
    Ok(took)
}

/// Deletes runs that finished more than `retention` ago, and their attempts.
pub(crate) async fn expire(pool: &AnyPool, retention: Duration) -> anyhow::Result<u64> {
    let cutoff = now_ms() - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    sqlx::query(
        "DELETE FROM attempts WHERE EXISTS (SELECT 1 FROM runs r WHERE r.workflow = attempts.workflow
           AND r.run_id = attempts.run_id AND r.finished_ms IS NOT NULL AND r.finished_ms < $1)",
    )
    .bind(cutoff)
    .execute(pool)
    .await?;
    let deleted =
        sqlx::query("DELETE FROM runs WHERE finished_ms IS NOT NULL AND finished_ms < $1")
            .bind(cutoff)
            .execute(pool)
            .await?;
    Ok(deleted.rows_affected())
}
