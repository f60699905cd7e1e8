//! `inqubo schedule add|list|remove`: a workflow's cron schedules. Those in the runners' code
//! are announced with the workflow; those added here are stored in RabbitMQ, one message each
//! in `<prefix>.<workflow>.schedules`, where the runner that leads the schedules reads them
//! (docs/scheduling.md).

use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::Subcommand;
use inqubo::{Schedule, ScheduleDefinition, WorkflowName, protocol::CONTENT_TYPE};
use lapin::{
    BasicProperties,
    options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions},
};
use serde_json::{Value, json};

use crate::{
    EXIT_NOTHING_CHANGED,
    broker::{Context, take_all},
    workflows::{announced, announced_workflow, queue_stats},
};

/// What `inqubo schedule` does.
#[derive(Debug, Subcommand)]
pub(crate) enum ScheduleAction {
    /// Every schedule of a workflow (or of every announced one), with its next fire times.
    List {
        /// Only this workflow.
        workflow: Option<String>,
    },
    /// Store a schedule: the runner leading the workflow's schedules fires it from its next
    /// read of the stored ones (within a few seconds).
    Add {
        /// The workflow.
        workflow: String,
        /// The schedule's name, the first part of its runs' ids (`<name>@<tick>`).
        name: String,
        /// The cron pattern: five fields (minute first) or six (seconds first), or `@daily`
        /// and the like.
        pattern: String,
        /// The IANA time zone the pattern is read in.
        #[arg(long, default_value = "UTC")]
        time_zone: String,
        /// The input of its runs, as JSON.
        #[arg(long, default_value = "null")]
        input: String,
        /// How late a new leader still fires a tick nobody fired (e.g. 10m, 1h).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
        catch_up: Duration,
    },
    /// Remove a stored schedule (those in the runners' code stay).
    Remove {
        /// The workflow.
        workflow: String,
        /// The schedule's name.
        name: String,
    },
}

/// How many next fire times `list` shows.
const NEXT_TICKS: usize = 3;

/// Runs `inqubo schedule <action>`.
pub(crate) async fn run(context: &Context, action: ScheduleAction) -> anyhow::Result<i32> {
    match action {
        ScheduleAction::List { workflow } => list(context, workflow.as_deref()).await,
        ScheduleAction::Add {
            workflow,
            name,
            pattern,
            time_zone,
            input,
            catch_up,
        } => {
            let input: Value = serde_json::from_str(&input).context("--input is not JSON")?;
            let schedule = Schedule::cron(name, pattern)?
                .in_time_zone(&time_zone)?
                .with_input(&input)?
                .catch_up(catch_up);
            add(context, &workflow, &schedule).await
        }
        ScheduleAction::Remove { workflow, name } => remove(context, &workflow, &name).await,
    }
}

/// The stored schedules of `workflow`'s queue, read without taking them; `None` if no runner
/// declared the queue.
pub(crate) async fn stored(
    context: &Context,
    workflow: &WorkflowName,
) -> anyhow::Result<Option<Vec<ScheduleDefinition>>> {
    let queue = context.topology()?.schedules_queue(workflow);
    if queue_stats(context, queue.as_str()).await?.is_none() {
        return Ok(None);
    }
    let (connection, channel) = context.channel().await?;
    let taken = take_all(&channel, queue.as_str()).await?;
    let found = taken
        .iter()
        .filter_map(|d| serde_json::from_slice(&d.data).ok())
        .collect();
    // Closing the channel without acknowledging gives every message back.
    let _ = connection.close(200, "read".into()).await;
    Ok(Some(found))
}

/// One schedule as `list` and the dashboard show it: where it comes from, and when it fires
/// next.
pub(crate) fn describe(definition: &ScheduleDefinition, source: &str, now: SystemTime) -> Value {
    let next: Vec<String> = Schedule::from_definition(definition)
        .map(|schedule| {
            std::iter::successors(schedule.next_tick(now), |tick| schedule.next_tick(*tick))
                .take(NEXT_TICKS)
                .map(|tick| humantime::format_rfc3339_seconds(tick).to_string())
                .collect()
        })
        .unwrap_or_default();
    json!({
        "name": definition.name,
        "source": source,
        "pattern": definition.pattern,
        "time_zone": definition.time_zone,
        "input": definition.input,
        "catch_up_s": definition.catch_up_s,
        "next": next,
    })
}

/// Every schedule of the announced workflows (or of `only`): those in code, then stored ones.
pub(crate) async fn all(context: &Context, only: Option<&str>) -> anyhow::Result<Vec<Value>> {
    let now = SystemTime::now();
    let mut out = Vec::new();
    for (name, definition) in announced(context).await? {
        if only.is_some_and(|w| w != name) {
            continue;
        }
        let mut schedules: Vec<Value> = definition
            .schedules
            .iter()
            .map(|s| describe(s, "code", now))
            .collect();
        let stored = stored(context, &name.parse()?).await?.unwrap_or_default();
        schedules.extend(stored.iter().map(|s| describe(s, "stored", now)));
        out.push(json!({"workflow": name, "schedules": schedules}));
    }
    if let Some(wanted) = only {
        anyhow::ensure!(
            !out.is_empty(),
            "no runner announced workflow `{wanted}` under prefix `{}`",
            context.prefix
        );
    }
    Ok(out)
}

async fn list(context: &Context, only: Option<&str>) -> anyhow::Result<i32> {
    let workflows = all(context, only).await?;
    if context.json {
        println!("{}", Value::Array(workflows));
        return Ok(0);
    }
    for workflow in &workflows {
        println!("{}", workflow["workflow"].as_str().unwrap_or_default());
        let schedules = workflow["schedules"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if schedules.is_empty() {
            println!("  (no schedule)");
        }
        for s in schedules {
            let next: Vec<&str> = s["next"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            println!(
                "  {:<20} {:<7} {:<18} {:<16} next {}",
                s["name"].as_str().unwrap_or_default(),
                s["source"].as_str().unwrap_or_default(),
                s["pattern"].as_str().unwrap_or_default(),
                s["time_zone"].as_str().unwrap_or_default(),
                next.join(", ")
            );
        }
    }
    Ok(0)
}

async fn add(context: &Context, workflow: &str, schedule: &Schedule) -> anyhow::Result<i32> {
    let name: WorkflowName = workflow.parse()?;
    let definition = &announced_workflow(context, workflow).await?;
    anyhow::ensure!(
        !definition
            .schedules
            .iter()
            .any(|s| s.name == schedule.name()),
        "workflow `{workflow}` has a schedule `{}` in its runners' code",
        schedule.name()
    );
    let Some(stored) = stored(context, &name).await? else {
        anyhow::bail!(
            "queue {} does not exist: start a runner of `{workflow}` of this version first",
            context.topology()?.schedules_queue(&name)
        );
    };
    if stored.iter().any(|s| s.name == schedule.name()) {
        eprintln!(
            "workflow `{workflow}` already has a stored schedule `{}`; remove it first",
            schedule.name()
        );
        return Ok(EXIT_NOTHING_CHANGED);
    }
    let body = serde_json::to_vec(&schedule.definition())?;
    let (connection, channel) = context.channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let queue = context.topology()?.schedules_queue(&name);
    channel
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &body,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type(CONTENT_TYPE.into())
                .with_message_id(format!("schedule:{workflow}:{}", schedule.name()).into()),
        )
        .await?
        .await?;
    let _ = connection.close(200, "added".into()).await;
    let described = describe(&schedule.definition(), "stored", SystemTime::now());
    if context.json {
        println!("{}", json!({"workflow": workflow, "added": described}));
    } else {
        println!(
            "schedule `{}` of `{workflow}` stored; next {}",
            schedule.name(),
            described["next"][0].as_str().unwrap_or("never")
        );
    }
    Ok(0)
}

async fn remove(context: &Context, workflow: &str, schedule: &str) -> anyhow::Result<i32> {
    let name: WorkflowName = workflow.parse()?;
    let queue = context.topology()?.schedules_queue(&name);
    anyhow::ensure!(
        queue_stats(context, queue.as_str()).await?.is_some(),
        "queue {queue} does not exist: no runner declared workflow `{workflow}`"
    );
    let (connection, channel) = context.channel().await?;
    let taken = take_all(&channel, queue.as_str()).await?;
    let mut removed = 0;
    for delivery in &taken {
        let matches = serde_json::from_slice::<ScheduleDefinition>(&delivery.data)
            .is_ok_and(|d| d.name == schedule);
        if matches {
            delivery.ack(BasicAckOptions::default()).await?;
            removed += 1;
        } else {
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await?;
        }
    }
    let _ = connection.close(200, "removed".into()).await;
    if removed == 0 {
        let in_code = announced(context)
            .await?
            .get(workflow)
            .is_some_and(|d| d.schedules.iter().any(|s| s.name == schedule));
        if in_code {
            anyhow::bail!(
                "schedule `{schedule}` of `{workflow}` is in its runners' code; remove it there"
            );
        }
        eprintln!("workflow `{workflow}` has no stored schedule `{schedule}`");
        return Ok(EXIT_NOTHING_CHANGED);
    }
    if context.json {
        println!("{}", json!({"workflow": workflow, "removed": schedule}));
    } else {
        println!("schedule `{schedule}` of `{workflow}` removed");
    }
    Ok(0)
}
