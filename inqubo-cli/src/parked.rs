//! `inqubo parked`: see, replay and purge the inputs that failed for good.
//!
//! Replay publishes a parked input back to its step's queue as `inqubo::protocol::resume`
//! builds it (through the retry exchange, as the next attempt in the run's next generation,
//! with its `run-id`, `traceparent` and a `message_id` of its own, so that the run's joins
//! take it and the run ends again), waits for the broker's confirm, and only then
//! acknowledges the parked copy: interrupted at any point, a message is at worst replayed
//! twice (with the same `message_id`), never lost.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Context as _;
use clap::Subcommand;
use inqubo::protocol::{
    self, header,
    wire::{self, Wire},
};
use lapin::{
    Channel,
    message::Delivery,
    options::{
        BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
        QueuePurgeOptions,
    },
    types::{AMQPValue, FieldTable},
};
use serde_json::json;

use crate::{broker::Context, workflows::queue_stats};

#[derive(Debug, Subcommand)]
pub(crate) enum Action {
    /// List a workflow's parked messages with their reasons.
    List {
        /// The workflow.
        workflow: String,
    },
    /// Show one parked message in full (its number from `list`).
    Show {
        /// The workflow.
        workflow: String,
        /// The message's number in `list`, from 1.
        number: usize,
    },
    /// Send parked messages back to the step they came from.
    Replay {
        /// The workflow.
        workflow: String,
        /// The message's number in `list`, from 1.
        #[arg(required_unless_present = "all")]
        number: Option<usize>,
        /// Replay every parked message.
        #[arg(long, conflicts_with = "number")]
        all: bool,
    },
    /// Delete every parked message of a workflow.
    Purge {
        /// The workflow.
        workflow: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

/// A header as text to show, whatever its type: a parked message may be one whose headers
/// could not be read.
fn text(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        other => wire::string_value(other)
            .or_else(|| wire::integer_value(other).map(|n| n.to_string()))
            .or_else(|| Some(format!("{other:?}"))),
    }
}

/// An integer header, of any width.
fn integer(headers: Option<&FieldTable>, name: &str) -> Option<i64> {
    wire::integer_value(headers?.inner().get(name)?)
}

fn describe(number: usize, delivery: &Delivery, full: bool) -> serde_json::Value {
    let headers = delivery.properties.headers().as_ref();
    let body = String::from_utf8_lossy(&delivery.data);
    let body = if full || body.len() <= 80 {
        body.into_owned()
    } else {
        format!(
            "{}… ({} bytes)",
            body.chars().take(80).collect::<String>(),
            delivery.data.len()
        )
    };
    json!({
        "number": number,
        "run_id": text(headers, header::RUN_ID),
        "step": text(headers, header::PARKED_STEP),
        "reason": text(headers, header::PARKED_REASON),
        "error": text(headers, header::PARKED_ERROR),
        "attempt": integer(headers, header::PARKED_ATTEMPT),
        "routing_key": text(headers, header::PARKED_ROUTING_KEY),
        "input": body,
    })
}

/// Takes up to `count` parked messages without acknowledging them.
async fn take(channel: &Channel, queue: &str, count: usize) -> anyhow::Result<Vec<Delivery>> {
    let mut taken = Vec::new();
    while taken.len() < count {
        match channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await?
        {
            Some(message) => taken.push(message.delivery),
            None => break,
        }
    }
    Ok(taken)
}

/// Which parked messages to replay.
#[derive(Debug, Clone)]
pub(crate) enum Selection {
    /// The message at this position (from 1), if it still belongs to `run_id` when given:
    /// positions shift as messages come and go, and a dashboard must not replay another one.
    One {
        /// Its position in the parked queue, from 1.
        number: usize,
        /// The run the message must belong to.
        run_id: Option<String>,
    },
    /// Every parked message.
    All,
}

/// A workflow's parked queue and its depth; an error naming the workflow if it has none.
async fn parked_queue(context: &Context, workflow: &str) -> anyhow::Result<(String, usize)> {
    let topology = context.topology()?;
    let name = workflow.parse().context("invalid workflow name")?;
    let queue = topology.parked_queue(&name).as_str().to_owned();
    let Some((depth, _)) = queue_stats(context, &queue).await? else {
        anyhow::bail!(
            "workflow `{workflow}` has no parked queue under prefix `{}`",
            context.prefix
        );
    };
    Ok((queue, depth as usize))
}

/// A workflow's parked messages, described (inputs cut at 80 characters).
pub(crate) async fn list(
    context: &Context,
    workflow: &str,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let (queue, depth) = parked_queue(context, workflow).await?;
    let (connection, channel) = context.channel().await?;
    let parked = take(&channel, &queue, depth).await;
    // Closing without acknowledging returns every message to the parked queue.
    let _ = connection.close(200, "listed".into()).await;
    Ok(parked?
        .iter()
        .enumerate()
        .map(|(i, d)| describe(i + 1, d, false))
        .collect())
}

/// Deletes every parked message of a workflow; returns how many.
pub(crate) async fn purge(context: &Context, workflow: &str) -> anyhow::Result<u32> {
    let (queue, _) = parked_queue(context, workflow).await?;
    let (connection, channel) = context.channel().await?;
    let purged = channel
        .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
        .await;
    let _ = connection.close(200, "purged".into()).await;
    Ok(purged?)
}

/// Sends parked messages back to their steps; returns how many.
pub(crate) async fn replay(
    context: &Context,
    workflow: &str,
    selection: Selection,
    progress: bool,
) -> anyhow::Result<usize> {
    let (queue, depth) = parked_queue(context, workflow).await?;
    let (connection, channel) = context.channel().await?;
    let replayed = replay_on(
        context, &channel, &queue, workflow, selection, depth, progress,
    )
    .await;
    // Anything taken and not acknowledged returns to the parked queue.
    let _ = connection.close(200, "replayed".into()).await;
    replayed
}

pub(crate) async fn run(context: &Context, action: Action) -> anyhow::Result<()> {
    match action {
        Action::List { workflow } => {
            let rows = list(context, &workflow).await?;
            if context.json {
                println!("{}", serde_json::Value::Array(rows));
            } else if rows.is_empty() {
                println!("no parked message for workflow {workflow}");
            } else {
                for row in rows {
                    println!(
                        "{:>4}  run {}  step {}  {}: {}",
                        row["number"],
                        row["run_id"].as_str().unwrap_or("?"),
                        row["step"].as_str().unwrap_or("?"),
                        row["reason"].as_str().unwrap_or("?"),
                        row["error"].as_str().unwrap_or("")
                    );
                }
            }
        }
        Action::Show { workflow, number } => {
            let (queue, _) = parked_queue(context, &workflow).await?;
            let (connection, channel) = context.channel().await?;
            let parked = take(&channel, &queue, number).await;
            let _ = connection.close(200, "shown".into()).await;
            let parked = parked?;
            let delivery = parked
                .get(number.saturating_sub(1))
                .filter(|_| number >= 1)
                .with_context(|| format!("there is no parked message number {number}"))?;
            println!(
                "{}",
                serde_json::to_string_pretty(&describe(number, delivery, true))?
            );
        }
        Action::Replay {
            workflow,
            number,
            all,
        } => {
            let selection = match (all, number) {
                (false, Some(number)) => Selection::One {
                    number,
                    run_id: None,
                },
                _ => Selection::All,
            };
            let progress = std::io::stderr().is_terminal() && !context.json;
            let replayed = replay(context, &workflow, selection, progress).await?;
            if context.json {
                println!("{}", json!({"replayed": replayed}));
            } else {
                println!("replayed {replayed} message(s)");
            }
        }
        Action::Purge { workflow, yes } => {
            let (_, depth) = parked_queue(context, &workflow).await?;
            if !yes
                && !confirm(&format!(
                    "purge {depth} parked message(s) of workflow {workflow}?"
                ))?
            {
                anyhow::bail!("not purged");
            }
            let purged = purge(context, &workflow).await?;
            if context.json {
                println!("{}", json!({"purged": purged}));
            } else {
                println!("purged {purged} parked message(s)");
            }
        }
    }
    Ok(())
}

fn confirm(question: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("{question} Refusing without a terminal to ask on; pass --yes");
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

async fn replay_on(
    context: &Context,
    channel: &Channel,
    queue: &str,
    workflow: &str,
    selection: Selection,
    depth: usize,
    progress: bool,
) -> anyhow::Result<usize> {
    let topology = context.topology()?;
    let workflow_name = workflow.parse().context("invalid workflow name")?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let (skip, count, expected_run) = match selection {
        Selection::One { number: 0, .. } => anyhow::bail!("messages are numbered from 1"),
        Selection::One { number, run_id } => (number - 1, 1, run_id),
        Selection::All => (0, depth, None),
    };
    let taken = take(channel, queue, skip + count).await?;
    if taken.len() <= skip {
        anyhow::bail!("there is no parked message number {}", skip + 1);
    }
    if let Some(expected) = expected_run {
        let found = text(taken[skip].properties.headers().as_ref(), header::RUN_ID);
        if found.as_deref() != Some(expected.as_str()) {
            anyhow::bail!(
                "parked message number {} is no longer the one of run {expected}; list again",
                skip + 1
            );
        }
    }
    let total = taken.len() - skip;
    let mut replayed = 0;
    for delivery in taken.iter().skip(skip) {
        let parked = wire::incoming(delivery);
        let Some(step) = text(delivery.properties.headers().as_ref(), header::PARKED_STEP) else {
            eprintln!(
                "skipping a parked message without a {} header",
                header::PARKED_STEP
            );
            continue;
        };
        // The next attempt, in the run's next generation, so that its joins accept it again.
        // A piece of a join parked by its shard names the join: the run join has no queue.
        let Some(message) = protocol::resume(&workflow_name, &parked, parked.generation() + 1)
        else {
            anyhow::bail!(
                "step `{step}` of workflow `{workflow}` has no queue to replay to; message kept in the parked queue"
            );
        };
        let out = Wire::new(&topology, message, delivery.properties.headers().as_ref());
        let confirm = channel
            .basic_publish(
                out.exchange.as_str().into(),
                out.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: out.mandatory,
                    ..Default::default()
                },
                &out.body,
                out.properties,
            )
            .await?
            .await?;
        // A nack: the broker did not take it (a full quorum queue refuses publishes).
        if confirm.is_nack() {
            anyhow::bail!(
                "the broker refused the replay to step `{step}` of workflow `{workflow}`; message kept in the parked queue"
            );
        }
        if confirm.take_message().is_some() {
            anyhow::bail!(
                "step `{step}` of workflow `{workflow}` has no queue any more; message kept in the parked queue"
            );
        }
        // Confirmed: now the parked copy may go.
        delivery.ack(BasicAckOptions::default()).await?;
        replayed += 1;
        if progress {
            eprint!("\rreplayed {replayed}/{total}");
        }
    }
    if progress {
        eprintln!();
    }
    Ok(replayed)
}
