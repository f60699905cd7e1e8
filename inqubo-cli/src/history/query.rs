//! Reading the run history: the queries behind `inqubo runs`, `inqubo run` and the dashboard's
//! JSON API. Each returns plain JSON, so that the command line and the HTTP API print the same
//! shapes.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::{AnyPool, Row};

use super::now_ms;

/// The statuses a run can have, in the order the dashboard shows them. A run's status is its
/// latest generation's: a failed run that was resumed is `running` again.
pub(crate) const RUN_STATUSES: [&str; 5] =
    ["running", "retrying", "succeeded", "failed", "cancelled"];

/// Which runs to list. Empty strings mean "any".
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub(crate) struct RunFilter {
    /// Only this workflow.
    pub(crate) workflow: String,
    /// Only this status.
    pub(crate) status: String,
    /// Only run ids containing this text.
    #[serde(rename = "q")]
    pub(crate) search: String,
    /// Only runs updated at or after this time (ms since the epoch).
    #[serde(skip)]
    pub(crate) since_ms: i64,
}

/// A page of runs, newest first, with the number of runs per status under the same filter
/// (ignoring its status).
pub(crate) async fn list_runs(
    pool: &AnyPool,
    filter: &RunFilter,
    page: u32,
    per_page: u32,
) -> anyhow::Result<Value> {
    let per_page = per_page.clamp(1, 500);
    let page = page.max(1);
    let escaped = filter
        .search
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    let pattern = format!("%{escaped}%");
    let rows = sqlx::query(
        "SELECT workflow, run_id, status, created_ms, updated_ms, finished_ms, generation FROM runs
         WHERE ($1 = '' OR workflow = $1) AND ($2 = '' OR status = $2) AND run_id LIKE $3 ESCAPE '\\'
           AND updated_ms >= $4
         ORDER BY created_ms DESC, run_id LIMIT $5 OFFSET $6",
    )
    .bind(filter.workflow.as_str())
    .bind(filter.status.as_str())
    .bind(pattern.as_str())
    .bind(filter.since_ms)
    .bind(i64::from(per_page))
    .bind(i64::from(page - 1) * i64::from(per_page))
    .fetch_all(pool)
    .await?;
    let counted = sqlx::query(
        "SELECT status, COUNT(*) FROM runs
         WHERE ($1 = '' OR workflow = $1) AND run_id LIKE $2 ESCAPE '\\' AND updated_ms >= $3
         GROUP BY status",
    )
    .bind(filter.workflow.as_str())
    .bind(pattern.as_str())
    .bind(filter.since_ms)
    .fetch_all(pool)
    .await?;
    let mut counts: serde_json::Map<String, Value> = RUN_STATUSES
        .iter()
        .map(|s| ((*s).to_owned(), json!(0)))
        .collect();
    for row in &counted {
        counts.insert(row.get::<String, _>(0), json!(row.get::<i64, _>(1)));
    }
    let total = if filter.status.is_empty() {
        counts.values().filter_map(Value::as_i64).sum::<i64>()
    } else {
        counts
            .get(&filter.status)
            .and_then(Value::as_i64)
            .unwrap_or(0)
    };
    let runs: Vec<Value> = rows
        .iter()
        .map(|row| {
            json!({
                "workflow": row.get::<String, _>(0),
                "run_id": row.get::<String, _>(1),
                "status": row.get::<String, _>(2),
                "created_ms": row.get::<i64, _>(3),
                "updated_ms": row.get::<i64, _>(4),
                "finished_ms": row.get::<Option<i64>, _>(5),
                "generation": row.get::<i64, _>(6),
            })
        })
        .collect();
    Ok(json!({
        "runs": runs,
        "total": total,
        "page": page,
        "per_page": per_page,
        "counts": counts,
    }))
}

fn parse(text: Option<String>) -> Option<Value> {
    text.and_then(|t| serde_json::from_str::<Value>(&t).ok())
}

/// A workflow's last announced definition, if the monitor has seen one.
pub(crate) async fn definition(
    pool: &AnyPool,
    workflow: &str,
) -> anyhow::Result<Option<inqubo::WorkflowDefinition>> {
    Ok(
        sqlx::query("SELECT definition FROM workflows WHERE workflow = $1")
            .bind(workflow)
            .fetch_optional(pool)
            .await?
            .and_then(|row| serde_json::from_str(&row.get::<String, _>(0)).ok()),
    )
}

/// One run in full: status, input, outcome, its generations, every step attempt with the
/// input the step received, and the workflow's definition. `None` if the run is not in the
/// history.
pub(crate) async fn run_detail(pool: &AnyPool, run_id: &str) -> anyhow::Result<Option<Value>> {
    let Some(run) = sqlx::query(
        "SELECT workflow, status, created_ms, finished_ms, outcome, input, updated_ms, generation
         FROM runs WHERE run_id = $1 ORDER BY updated_ms DESC LIMIT 1",
    )
    .bind(run_id)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let workflow: String = run.get(0);
    let attempts = sqlx::query(
        "SELECT step, attempt, status, started_ms, finished_ms, error, output, generation, reason
         FROM attempts WHERE workflow = $1 AND run_id = $2
         ORDER BY generation, started_ms, step, attempt",
    )
    .bind(workflow.as_str())
    .bind(run_id)
    .fetch_all(pool)
    .await?;
    let ended = sqlx::query(
        "SELECT generation, status, ended_ms, outcome FROM run_generations
         WHERE workflow = $1 AND run_id = $2 ORDER BY generation",
    )
    .bind(workflow.as_str())
    .bind(run_id)
    .fetch_all(pool)
    .await?;
    let maps = map_counts(pool, &workflow, run_id).await?;
    let definition = definition(pool, &workflow).await?;
    let run_input = parse(run.get::<Option<String>, _>(5));
    let outputs: HashMap<String, Value> = attempts
        .iter()
        .filter_map(|a| Some((a.get::<String, _>(0), parse(a.get::<Option<String>, _>(6))?)))
        .collect();
    let inputs = step_inputs(definition.as_ref(), run_input.as_ref(), &outputs);
    let status = run.get::<String, _>(1);
    let finished_ms = run.get::<Option<i64>, _>(3);
    let outcome = parse(run.get::<Option<String>, _>(4));
    let latest = run.get::<i64, _>(7);
    let mut ended: HashMap<i64, Value> = ended
        .iter()
        .map(|g| {
            let generation = g.get::<i64, _>(0);
            let seen = json!({
                "generation": generation,
                "status": g.get::<String, _>(1),
                "ended_ms": g.get::<i64, _>(2),
                "outcome": parse(g.get::<Option<String>, _>(3)),
            });
            (generation, seen)
        })
        .collect();
    // Every generation up to the latest: how it ended; the latest as the run stands (running,
    // or ended by a skipped step's word); an earlier one the monitor never saw end as null.
    let generations: Vec<Value> = (1..=latest)
        .map(|generation| {
            ended.remove(&generation).unwrap_or_else(|| {
                let latest = generation == latest;
                json!({
                    "generation": generation,
                    "status": latest.then_some(status.as_str()),
                    "ended_ms": if latest { finished_ms } else { None },
                    "outcome": if latest { outcome.clone() } else { None },
                })
            })
        })
        .collect();
    Ok(Some(json!({
        "workflow": workflow,
        "run_id": run_id,
        "status": status,
        "created_ms": run.get::<i64, _>(2),
        "finished_ms": finished_ms,
        "updated_ms": run.get::<i64, _>(6),
        "generation": latest,
        "generations": generations,
        "outcome": outcome,
        "input": run_input,
        "definition": definition,
        "maps": maps,
        "attempts": attempts.iter().map(|a| json!({
            "step": a.get::<String, _>(0),
            "attempt": a.get::<i64, _>(1),
            "generation": a.get::<i64, _>(7),
            "status": a.get::<String, _>(2),
            "started_ms": a.get::<i64, _>(3),
            "finished_ms": a.get::<Option<i64>, _>(4),
            "error": a.get::<Option<String>, _>(5),
            "reason": a.get::<Option<String>, _>(8),
            "input": inputs.get(&a.get::<String, _>(0)),
            "output": parse(a.get::<Option<String>, _>(6)),
        })).collect::<Vec<_>>(),
    })))
}

/// Each map step of a run as one entry: how many elements its list has, and how many of them
/// succeeded, are running (started or retrying), failed or were skipped, by their latest attempt.
async fn map_counts(pool: &AnyPool, workflow: &str, run_id: &str) -> anyhow::Result<Vec<Value>> {
    let rows = sqlx::query(
        "SELECT step, MAX(size), status, COUNT(*) FROM map_elements
         WHERE workflow = $1 AND run_id = $2 GROUP BY step, status ORDER BY step",
    )
    .bind(workflow)
    .bind(run_id)
    .fetch_all(pool)
    .await?;
    let mut maps: Vec<Value> = Vec::new();
    for row in rows {
        let step: String = row.get(0);
        if maps.last().is_none_or(|m| m["step"] != step.as_str()) {
            maps.push(json!({
                "step": step, "elements": 0, "succeeded": 0, "running": 0, "failed": 0, "skipped": 0,
            }));
        }
        let Some(entry) = maps.last_mut() else {
            continue;
        };
        let size = row.get::<i64, _>(1);
        if entry["elements"].as_i64().unwrap_or(0) < size {
            entry["elements"] = json!(size);
        }
        let column = match row.get::<String, _>(2).as_str() {
            "succeeded" => "succeeded",
            "failed" => "failed",
            "skipped" => "skipped",
            _ => "running",
        };
        let count = entry[column].as_i64().unwrap_or(0) + row.get::<i64, _>(3);
        entry[column] = json!(count);
    }
    Ok(maps)
}

/// The newest `limit` runs of `workflow` whose id starts with `prefix` (a schedule's runs:
/// `<name>@`), newest first: id, status and times.
pub(crate) async fn runs_starting_with(
    pool: &AnyPool,
    workflow: &str,
    prefix: &str,
    limit: i64,
) -> anyhow::Result<Value> {
    // `LIKE` with the prefix's own `%` and `_` escaped.
    let pattern = format!(
        "{}%",
        prefix
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    );
    let rows = sqlx::query(
        "SELECT run_id, status, created_ms, finished_ms FROM runs
         WHERE workflow = $1 AND run_id LIKE $2 ESCAPE '\\'
         ORDER BY created_ms DESC LIMIT $3",
    )
    .bind(workflow)
    .bind(pattern)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(Value::Array(
        rows.iter()
            .map(|r| {
                json!({
                    "run_id": r.get::<String, _>(0),
                    "status": r.get::<String, _>(1),
                    "created_ms": r.get::<i64, _>(2),
                    "finished_ms": r.get::<Option<i64>, _>(3),
                })
            })
            .collect(),
    ))
}

/// What each step of a run received: the run input for first steps, the parent's output
/// otherwise, a JSON array of the parents' outputs for a join.
fn step_inputs(
    definition: Option<&inqubo::WorkflowDefinition>,
    run_input: Option<&Value>,
    outputs: &HashMap<String, Value>,
) -> HashMap<String, Value> {
    let mut inputs = HashMap::new();
    for step in definition.map(|d| d.steps.as_slice()).unwrap_or_default() {
        let input = match step.parents.as_slice() {
            [] => run_input.cloned(),
            [parent] => outputs.get(parent.as_str()).cloned(),
            parents => Some(Value::Array(
                parents
                    .iter()
                    .map(|p| outputs.get(p.as_str()).cloned().unwrap_or_default())
                    .collect(),
            )),
        };
        if let Some(input) = input {
            inputs.insert(step.name.to_string(), input);
        }
    }
    inputs
}

/// Every workflow the monitor has seen, with per-step attempt counts over the last `window_ms`:
/// `{workflow: {step: {started, succeeded, retrying, failed, skipped}}}` plus the definitions.
pub(crate) async fn workflow_activity(pool: &AnyPool, window_ms: i64) -> anyhow::Result<Value> {
    let definitions = sqlx::query("SELECT workflow, definition FROM workflows ORDER BY workflow")
        .fetch_all(pool)
        .await?;
    let activity = sqlx::query(
        "SELECT workflow, step, status, COUNT(*) FROM attempts WHERE started_ms >= $1
         GROUP BY workflow, step, status",
    )
    .bind(now_ms() - window_ms)
    .fetch_all(pool)
    .await?;
    let mut counts: HashMap<(String, String), serde_json::Map<String, Value>> = HashMap::new();
    for row in &activity {
        counts
            .entry((row.get::<String, _>(0), row.get::<String, _>(1)))
            .or_default()
            .insert(row.get::<String, _>(2), json!(row.get::<i64, _>(3)));
    }
    let workflows: Vec<Value> = definitions
        .iter()
        .filter_map(|row| {
            let name: String = row.get(0);
            let definition: inqubo::WorkflowDefinition =
                serde_json::from_str(&row.get::<String, _>(1)).ok()?;
            let steps: Vec<Value> = definition
                .steps
                .iter()
                .map(|step| {
                    let seen = counts
                        .get(&(name.clone(), step.name.to_string()))
                        .cloned()
                        .unwrap_or_default();
                    let count = |s: &str| seen.get(s).and_then(Value::as_i64).unwrap_or(0);
                    let finished = count("succeeded") + count("retrying") + count("failed");
                    let failures = count("retrying") + count("failed");
                    json!({
                        "step": step.name,
                        "attempts": count("started") + finished,
                        "succeeded": count("succeeded"),
                        "retried": count("retrying"),
                        "failed": count("failed"),
                        "skipped": count("skipped"),
                        "failure_rate": if finished == 0 { Value::Null } else {
                            json!(failures as f64 / finished as f64)
                        },
                    })
                })
                .collect();
            Some(json!({"workflow": name, "definition": definition, "steps": steps}))
        })
        .collect();
    Ok(json!({"window_ms": window_ms, "workflows": workflows}))
}

/// The windows the workflow charts cover, and the width of one bucket in each.
pub(crate) const CHART_WINDOWS: [(&str, i64, i64); 2] = [
    ("1h", 60 * 60 * 1000, 60 * 1000),
    ("1d", 24 * 60 * 60 * 1000, 15 * 60 * 1000),
];

/// What the dashboard charts of `workflow` over the last `window_ms`, in buckets of
/// `bucket_ms` ending now: runs started, finished and failed per bucket, and each step's
/// attempt durations (p50, p90, p99 per bucket and over the whole window).
pub(crate) async fn workflow_stats(
    pool: &AnyPool,
    workflow: &str,
    window_ms: i64,
    bucket_ms: i64,
) -> anyhow::Result<Value> {
    let end = now_ms();
    let start = end - window_ms;
    let buckets = usize::try_from(window_ms / bucket_ms).unwrap_or(0).max(1);
    let bucket_of = |at: i64| -> Option<usize> {
        if at < start || at > end {
            return None;
        }
        let index = usize::try_from((at - start) / bucket_ms).ok()?;
        Some(index.min(buckets - 1))
    };
    let mut started = vec![0_u64; buckets];
    let mut finished = vec![0_u64; buckets];
    let mut failed = vec![0_u64; buckets];
    let runs = sqlx::query(
        "SELECT created_ms, finished_ms, status FROM runs
         WHERE workflow = $1 AND (created_ms >= $2 OR finished_ms >= $2)",
    )
    .bind(workflow)
    .bind(start)
    .fetch_all(pool)
    .await?;
    for run in &runs {
        if let Some(i) = bucket_of(run.get::<i64, _>(0)) {
            started[i] += 1;
        }
        if let Some(i) = run.get::<Option<i64>, _>(1).and_then(bucket_of) {
            finished[i] += 1;
            if run.get::<String, _>(2) == "failed" {
                failed[i] += 1;
            }
        }
    }
    let attempts = sqlx::query(
        "SELECT step, started_ms, finished_ms FROM attempts
         WHERE workflow = $1 AND finished_ms IS NOT NULL AND finished_ms >= $2
           AND status <> 'skipped'",
    )
    .bind(workflow)
    .bind(start)
    .fetch_all(pool)
    .await?;
    // Per step: every duration in the window, and those of each bucket.
    let mut durations: std::collections::BTreeMap<String, (Vec<i64>, Vec<Vec<i64>>)> =
        Default::default();
    for attempt in &attempts {
        let (Some(finished_at), started_at) =
            (attempt.get::<Option<i64>, _>(2), attempt.get::<i64, _>(1))
        else {
            continue;
        };
        let Some(i) = bucket_of(finished_at) else {
            continue;
        };
        let took = (finished_at - started_at).max(0);
        let (all, per_bucket) = durations
            .entry(attempt.get::<String, _>(0))
            .or_insert_with(|| (Vec::new(), vec![Vec::new(); buckets]));
        all.push(took);
        per_bucket[i].push(took);
    }
    let steps: Vec<Value> = durations
        .into_iter()
        .map(|(step, (mut all, per_bucket))| {
            let p50_per_bucket: Vec<Option<i64>> = per_bucket
                .into_iter()
                .map(|mut bucket| percentile(&mut bucket, 50))
                .collect();
            json!({
                "step": step,
                "count": all.len(),
                "p50_ms": percentile(&mut all, 50),
                "p90_ms": percentile(&mut all, 90),
                "p99_ms": percentile(&mut all, 99),
                "p50_ms_per_bucket": p50_per_bucket,
            })
        })
        .collect();
    let total_finished: u64 = finished.iter().sum();
    let total_failed: u64 = failed.iter().sum();
    Ok(json!({
        "workflow": workflow,
        "window_ms": window_ms,
        "bucket_ms": bucket_ms,
        "bucket_starts_ms": (0..buckets).map(|i| start + bucket_ms * i as i64).collect::<Vec<_>>(),
        "started": started,
        "finished": finished,
        "failed": failed,
        "failure_rate": (total_finished > 0).then(|| total_failed as f64 / total_finished as f64),
        "steps": steps,
    }))
}

/// The `p`th percentile (nearest rank) of `values`, which it sorts; `None` if empty.
fn percentile(values: &mut [i64], p: usize) -> Option<i64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = (p * values.len()).div_ceil(100).max(1);
    values.get(rank - 1).copied()
}

#[cfg(test)]
mod chart_tests {
    use super::percentile;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut values: Vec<i64> = (1..=100).rev().collect();
        assert_eq!(percentile(&mut values, 50), Some(50));
        assert_eq!(percentile(&mut values, 90), Some(90));
        assert_eq!(percentile(&mut values, 99), Some(99));
        assert_eq!(percentile(&mut [7], 99), Some(7));
        assert_eq!(percentile(&mut [], 50), None);
    }
}
