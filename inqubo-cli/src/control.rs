//! `inqubo cancel` and `inqubo run resume`: steering one run, through `Client::cancel` and
//! `Client::resume`. The dashboard's buttons call the same functions.
//!
//! A run id alone does not say which workflow the run belongs to. When it is not given, it is
//! looked up: in the history store if there is one, then among the workflows runners
//! announced (for a resume, in their parked queues).

use std::time::Duration;

use anyhow::Context as _;
use inqubo::{RunId, WorkflowName};
use serde_json::json;
use sqlx::{AnyPool, Row};

use crate::{EXIT_NOTHING_CHANGED, EXIT_UNANSWERED, broker::Context, history, parked, workflows};

/// The workflow of a run could not be told from what was given.
#[derive(Debug)]
pub(crate) struct UnknownWorkflow(String);

impl std::fmt::Display for UnknownWorkflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UnknownWorkflow {}

/// What the workflow of a run is looked up for: a resume can also search parked queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    Cancel,
    Resume,
}

/// The workflow of `run_id`: `given`, else the one the store recorded it under, else (for a
/// cancel) the only announced workflow, or (for a resume) the announced workflow whose parked
/// queue holds inputs of the run. `flag` names the way to give it, for the error message.
pub(crate) async fn workflow_of(
    context: &Context,
    run_id: &RunId,
    given: Option<WorkflowName>,
    store: Option<&AnyPool>,
    purpose: Purpose,
    flag: &str,
) -> anyhow::Result<WorkflowName> {
    if let Some(workflow) = given {
        return Ok(workflow);
    }
    if let Some(pool) = store {
        let recorded = recorded_workflows(pool, run_id).await?;
        match recorded.as_slice() {
            [one] => {
                return one
                    .parse()
                    .context("the store holds an invalid workflow name");
            }
            [] => {}
            many => {
                return Err(UnknownWorkflow(format!(
                    "run `{run_id}` is in the history of several workflows ({}); name one with {flag}",
                    many.join(", ")
                ))
                .into());
            }
        }
    }
    let announced = workflows::announced(context).await?;
    let names: Vec<&String> = announced.keys().collect();
    let candidates: Vec<&String> = match purpose {
        Purpose::Cancel => names,
        Purpose::Resume => {
            let mut holding = Vec::new();
            for name in names {
                if parked::holds_run(context, name, run_id.as_str()).await? {
                    holding.push(name);
                }
            }
            holding
        }
    };
    match (purpose, candidates.as_slice()) {
        (_, [one]) => Ok(one.parse().context("an invalid announced workflow name")?),
        (Purpose::Cancel, []) => Err(UnknownWorkflow(format!(
            "no workflow is announced under prefix `{}`, so run `{run_id}` cannot be placed; name its workflow with {flag}",
            context.prefix
        ))
        .into()),
        (Purpose::Resume, []) => Err(UnknownWorkflow(format!(
            "no announced workflow has parked inputs of run `{run_id}`; name its workflow with {flag}"
        ))
        .into()),
        (Purpose::Cancel, many) => Err(UnknownWorkflow(format!(
            "cannot tell which workflow run `{run_id}` belongs to: {} are announced ({}); name it with {flag}",
            many.len(),
            join(many)
        ))
        .into()),
        (Purpose::Resume, many) => Err(UnknownWorkflow(format!(
            "parked inputs of run `{run_id}` are in several workflows ({}); name one with {flag}",
            join(many)
        ))
        .into()),
    }
}

/// The workflows the history recorded run `run_id` under (a run id is unique per workflow).
async fn recorded_workflows(pool: &AnyPool, run_id: &RunId) -> anyhow::Result<Vec<String>> {
    let rows = sqlx::query("SELECT workflow FROM runs WHERE run_id = $1 ORDER BY workflow")
        .bind(run_id.as_str())
        .fetch_all(pool)
        .await
        .context("cannot read the store")?;
    rows.iter()
        .map(|row| Ok(row.try_get::<String, _>("workflow")?))
        .collect()
}

fn join(names: &[&String]) -> String {
    names
        .iter()
        .map(|n| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// How a cancel ended, as the CLI and the dashboard report it.
#[derive(Debug)]
pub(crate) enum Cancelled {
    /// The run join cancelled the run.
    Done,
    /// The run had already ended this way (`succeeded`, `failed` or `cancelled`).
    Refused { ended: String },
    /// No runner answered within the timeout; the request stays queued.
    Unanswered { message: String },
}

/// Cancels `run_id` of `workflow` through `Client::cancel`.
pub(crate) async fn cancel(
    context: &Context,
    workflow: &WorkflowName,
    run_id: &RunId,
    reason: &str,
    timeout: Duration,
) -> anyhow::Result<Cancelled> {
    let client = context.client().await?;
    match client.cancel(workflow, run_id, reason, timeout).await {
        Ok(()) => Ok(Cancelled::Done),
        Err(inqubo::Error::CancelRefused { ended, .. }) => Ok(Cancelled::Refused { ended }),
        Err(error @ inqubo::Error::CancelUnanswered { .. }) => Ok(Cancelled::Unanswered {
            message: error.to_string(),
        }),
        Err(error) => Err(error.into()),
    }
}

/// "had already succeeded", "had already been cancelled".
pub(crate) fn already(ended: &str) -> String {
    match ended {
        "cancelled" => "had already been cancelled".to_owned(),
        other => format!("had already {other}"),
    }
}

/// Opens the store if one was named.
async fn store(store: Option<&str>) -> anyhow::Result<Option<AnyPool>> {
    match store {
        Some(url) if !url.is_empty() => Ok(Some(history::open(url).await?)),
        _ => Ok(None),
    }
}

/// `inqubo cancel`; returns the exit code.
pub(crate) async fn cancel_command(
    context: &Context,
    run_id: &RunId,
    workflow: Option<WorkflowName>,
    store_url: Option<&str>,
    reason: &str,
    timeout: Duration,
) -> anyhow::Result<i32> {
    let pool = store(store_url).await?;
    let workflow = workflow_of(
        context,
        run_id,
        workflow,
        pool.as_ref(),
        Purpose::Cancel,
        "--workflow",
    )
    .await?;
    let outcome = cancel(context, &workflow, run_id, reason, timeout).await?;
    let (status, code) = match &outcome {
        Cancelled::Done => ("cancelled", 0),
        Cancelled::Refused { .. } => ("refused", EXIT_NOTHING_CHANGED),
        Cancelled::Unanswered { .. } => ("queued", EXIT_UNANSWERED),
    };
    if context.json {
        let mut answer = json!({"run_id": run_id, "workflow": workflow, "status": status});
        match &outcome {
            Cancelled::Done => answer["reason"] = json!(reason),
            Cancelled::Refused { ended } => answer["ended"] = json!(ended),
            Cancelled::Unanswered { message } => answer["error"] = json!(message),
        }
        println!("{answer}");
        return Ok(code);
    }
    match outcome {
        Cancelled::Done => println!("run {run_id} of workflow {workflow} cancelled"),
        Cancelled::Refused { ended } => {
            println!("run {run_id} {}; nothing changed", already(&ended));
        }
        Cancelled::Unanswered { message } => eprintln!("{message}"),
    }
    Ok(code)
}

/// `inqubo run resume`; returns the exit code.
pub(crate) async fn resume_command(
    context: &Context,
    run_id: &RunId,
    workflow: Option<WorkflowName>,
    store_url: Option<&str>,
) -> anyhow::Result<i32> {
    let pool = store(store_url).await?;
    let workflow = workflow_of(
        context,
        run_id,
        workflow,
        pool.as_ref(),
        Purpose::Resume,
        "--workflow",
    )
    .await?;
    let client = context.client().await?;
    match client.resume(&workflow, run_id).await {
        Ok(resumed) => {
            if context.json {
                println!(
                    "{}",
                    json!({
                        "run_id": run_id, "workflow": workflow,
                        "generation": resumed.generation, "inputs": resumed.inputs,
                    })
                );
            } else {
                println!(
                    "run {run_id} of workflow {workflow} resumed as generation {}: {} input(s) sent back to their steps",
                    resumed.generation, resumed.inputs
                );
            }
            Ok(0)
        }
        Err(error @ inqubo::Error::NothingToResume { .. }) => {
            eprintln!("{error}");
            Ok(EXIT_NOTHING_CHANGED)
        }
        Err(error) => Err(error.into()),
    }
}
