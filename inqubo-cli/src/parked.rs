//! `inqubo parked`: see, replay and purge the inputs that failed for good.
//!
//! Replay publishes a parked input back to its step's queue (through the retry exchange, with
//! attempts counting from 1 again), waits for the broker's confirm, and only then acknowledges
//! the parked copy: interrupted at any point, a message is at worst replayed twice, never lost.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Context as _;
use clap::Subcommand;
use lapin::{
    BasicProperties, Channel,
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

fn text(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        other => Some(format!("{other:?}")),
    }
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
        "run_id": text(headers, "run-id"),
        "step": text(headers, "parked-step"),
        "reason": text(headers, "parked-reason"),
        "error": text(headers, "parked-error"),
        "attempt": text(headers, "parked-attempt"),
        "routing_key": text(headers, "parked-routing-key"),
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

pub(crate) async fn run(context: &Context, action: Action) -> anyhow::Result<()> {
    let topology = context.topology()?;
    let workflow = match &action {
        Action::List { workflow }
        | Action::Show { workflow, .. }
        | Action::Replay { workflow, .. }
        | Action::Purge { workflow, .. } => workflow.clone(),
    };
    let name = workflow.parse().context("invalid workflow name")?;
    let queue = topology.parked_queue(&name);
    let Some((depth, _)) = queue_stats(context, queue.as_str()).await? else {
        anyhow::bail!(
            "workflow `{workflow}` has no parked queue under prefix `{}`",
            context.prefix
        );
    };
    let (connection, channel) = context.channel().await?;
    let result = match action {
        Action::List { .. } => {
            let parked = take(&channel, queue.as_str(), depth as usize).await?;
            let rows: Vec<_> = parked
                .iter()
                .enumerate()
                .map(|(i, d)| describe(i + 1, d, false))
                .collect();
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
            Ok(())
        }
        Action::Show { number, .. } => {
            let parked = take(&channel, queue.as_str(), number).await?;
            let delivery = parked
                .get(number.saturating_sub(1))
                .filter(|_| number >= 1)
                .with_context(|| format!("there is no parked message number {number}"))?;
            println!(
                "{}",
                serde_json::to_string_pretty(&describe(number, delivery, true))?
            );
            Ok(())
        }
        Action::Replay { number, all, .. } => {
            replay(
                context,
                &channel,
                queue.as_str(),
                &workflow,
                if all { None } else { number },
                depth as usize,
            )
            .await
        }
        Action::Purge { yes, .. } => {
            if !yes
                && !confirm(&format!(
                    "purge {depth} parked message(s) of workflow {workflow}?"
                ))?
            {
                anyhow::bail!("not purged");
            }
            let purged = channel
                .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
                .await?;
            if context.json {
                println!("{}", json!({"purged": purged}));
            } else {
                println!("purged {purged} parked message(s)");
            }
            Ok(())
        }
    };
    // Anything taken and not acknowledged returns to the parked queue.
    let _ = connection.close(200, "done".into()).await;
    result
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

async fn replay(
    context: &Context,
    channel: &Channel,
    queue: &str,
    workflow: &str,
    number: Option<usize>,
    depth: usize,
) -> anyhow::Result<()> {
    let topology = context.topology()?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let (skip, count) = match number {
        Some(0) => anyhow::bail!("messages are numbered from 1"),
        Some(n) => (n - 1, 1),
        None => (0, depth),
    };
    let taken = take(channel, queue, skip + count).await?;
    if taken.len() <= skip {
        anyhow::bail!("there is no parked message number {}", skip + 1);
    }
    let progress = std::io::stderr().is_terminal() && !context.json;
    let total = taken.len() - skip;
    let mut replayed = 0;
    for delivery in taken.iter().skip(skip) {
        let headers = delivery.properties.headers().as_ref();
        let Some(step) = text(headers, "parked-step") else {
            eprintln!("skipping a parked message without a parked-step header");
            continue;
        };
        let mut fresh = FieldTable::default();
        if let Some(AMQPValue::LongString(run_id)) = headers.and_then(|h| h.inner().get("run-id")) {
            fresh.insert("run-id".into(), AMQPValue::LongString(run_id.clone()));
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(fresh);
        let confirm = channel
            .basic_publish(
                topology.retry_exchange().as_str().into(),
                format!("{workflow}.{step}").as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &delivery.data,
                properties,
            )
            .await?
            .await?;
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
    if context.json {
        println!("{}", json!({"replayed": replayed}));
    } else {
        println!("replayed {replayed} message(s)");
    }
    Ok(())
}
