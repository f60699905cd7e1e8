//! `inqubo parked`: see, replay and purge the inputs that failed for good.
//!
//! Parked messages are addressed by identity: every parked input of a run (or of one step of
//! it), or one `message_id`. Positions shift as messages come and go; `list` still numbers
//! them, and the command line accepts a number, but the docs and the dashboard use identity.
//!
//! Replay publishes a parked input back to its step's queue as `inqubo::protocol::resume_run`
//! builds it (through the retry exchange, as the next attempt in the run's next generation —
//! one generation for all the inputs of a run replayed together — with its `run-id`,
//! `traceparent` and a `message_id` of its own, so that the run's joins take it and the run
//! ends again), waits for the broker's confirm, and only then acknowledges the parked copy:
//! interrupted at any point, a message is at worst replayed twice (with the same
//! `message_id`), never lost.
//!
//! Every command reads the parked queue by taking its messages without acknowledging them, and
//! gives back every message it did not replay with `basic.nack` (requeue), one by one in queue
//! order, so that they keep their order among themselves. A classic queue puts each back where
//! it was; a quorum queue (RabbitMQ 3.10) puts them at its back in the order they are given
//! back, behind any message parked in the meantime.

use std::{
    collections::BTreeMap,
    io::{BufRead, IsTerminal, Write},
};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use inqubo::{
    FailureReason, WorkflowName,
    protocol::{
        self, Incoming, Outgoing, header,
        wire::{self, Wire},
    },
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

use crate::{
    EXIT_NOTHING_CHANGED,
    broker::{Context, give_back},
    workflows::queue_stats,
};

#[derive(Debug, Subcommand)]
pub(crate) enum Action {
    /// List a workflow's parked messages with their run, generation, reason and message id.
    List {
        /// The workflow.
        workflow: String,
    },
    /// Show one parked message in full.
    #[command(
        group = clap::ArgGroup::new("shown").required(true).multiple(false),
        override_usage = "inqubo parked show <WORKFLOW> (--message-id <MESSAGE_ID> | <NUMBER>)"
    )]
    Show {
        /// The workflow.
        workflow: String,
        /// Its position in `list`, from 1 (positions shift; prefer --message-id).
        #[arg(group = "shown")]
        number: Option<usize>,
        /// The message with this `message_id` (from `list`).
        #[arg(long, group = "shown")]
        message_id: Option<String>,
    },
    /// Send parked messages back to the step they came from.
    #[command(
        override_usage = "inqubo parked replay <WORKFLOW> (--run-id <RUN_ID> [--step <STEP>] | --message-id <MESSAGE_ID> | --all | <NUMBER>)"
    )]
    Replay {
        /// The workflow.
        workflow: String,
        #[command(flatten)]
        which: Which,
        /// With --run-id: only the input parked from this step.
        #[arg(long, conflicts_with_all = ["message_id", "all", "number"])]
        step: Option<String>,
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

/// Which parked messages a replay sends back: exactly one of these.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub(crate) struct Which {
    /// Every parked input of this run.
    #[arg(long)]
    run_id: Option<String>,
    /// The parked message with this `message_id` (from `list`).
    #[arg(long)]
    message_id: Option<String>,
    /// Every parked message of the workflow.
    #[arg(long)]
    all: bool,
    /// The message at this position in `list`, from 1 (positions shift; prefer the others).
    number: Option<usize>,
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

fn message_id(delivery: &Delivery) -> Option<&str> {
    delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str())
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
        "message_id": message_id(delivery),
        "run_id": text(headers, header::RUN_ID),
        "generation": wire::incoming(delivery).generation(),
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
    /// Every parked input of a run, or only the one parked from `step`.
    Run {
        /// The run.
        run_id: String,
        /// Only the input of this step.
        step: Option<String>,
    },
    /// The parked message with this `message_id` (every copy of it, if it was parked twice).
    Message(String),
    /// The message at this position in the parked queue, from 1 (command line only).
    Number(usize),
    /// Every parked message.
    All,
}

impl Selection {
    fn matches(&self, number: usize, delivery: &Delivery) -> bool {
        let headers = delivery.properties.headers().as_ref();
        match self {
            Selection::Run { run_id, step } => {
                text(headers, header::RUN_ID).as_deref() == Some(run_id.as_str())
                    && step.as_ref().is_none_or(|step| {
                        text(headers, header::PARKED_STEP).as_deref() == Some(step.as_str())
                    })
            }
            Selection::Message(id) => message_id(delivery) == Some(id.as_str()),
            Selection::Number(n) => *n == number,
            Selection::All => true,
        }
    }

    fn describe(&self) -> String {
        match self {
            Selection::Run { run_id, step: None } => format!("of run `{run_id}`"),
            Selection::Run {
                run_id,
                step: Some(step),
            } => format!("of step `{step}` of run `{run_id}`"),
            Selection::Message(id) => format!("with message id `{id}`"),
            Selection::Number(n) => format!("number {n}"),
            Selection::All => "at all".to_owned(),
        }
    }
}

/// No parked message matched a selection: nothing was replayed, nothing moved.
#[derive(Debug)]
pub(crate) struct NoMatch(String);

impl std::fmt::Display for NoMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NoMatch {}

/// What a replay did.
#[derive(Debug, Default)]
pub(crate) struct Replayed {
    /// How many messages went back to their steps.
    pub(crate) replayed: usize,
    /// The selected messages left parked because they cannot go back, each with why.
    pub(crate) kept: Vec<serde_json::Value>,
}

impl Replayed {
    /// The JSON the command line and the dashboard answer with.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        json!({"replayed": self.replayed, "kept": self.kept})
    }
}

/// A workflow's parked queue and its depth; an error naming the workflow if it has none.
async fn parked_queue(context: &Context, workflow: &str) -> anyhow::Result<(String, usize)> {
    let queue = parked_queue_name(context, workflow)?;
    let Some((depth, _)) = queue_stats(context, &queue).await? else {
        anyhow::bail!(
            "workflow `{workflow}` has no parked queue under prefix `{}`",
            context.prefix
        );
    };
    Ok((queue, depth as usize))
}

fn parked_queue_name(context: &Context, workflow: &str) -> anyhow::Result<String> {
    let topology = context.topology()?;
    let name = workflow.parse().context("invalid workflow name")?;
    Ok(topology.parked_queue(&name).as_str().to_owned())
}

/// Every message of a workflow's parked queue, taken and given back in order: what `f` makes
/// of them.
async fn peek<T>(
    context: &Context,
    workflow: &str,
    f: impl FnOnce(&[Delivery]) -> T,
) -> anyhow::Result<T> {
    let (queue, depth) = parked_queue(context, workflow).await?;
    let (connection, channel) = context.channel().await?;
    let result = async {
        let parked = take(&channel, &queue, depth).await?;
        let seen = f(&parked);
        give_back(&parked).await?;
        anyhow::Ok(seen)
    }
    .await;
    // Anything taken and not given back returns to the parked queue when the channel closes.
    let _ = connection.close(200, "peeked".into()).await;
    result
}

/// A workflow's parked messages, described; inputs cut at 80 characters unless `whole`.
pub(crate) async fn list(
    context: &Context,
    workflow: &str,
    whole: bool,
) -> anyhow::Result<Vec<serde_json::Value>> {
    peek(context, workflow, |parked| {
        parked
            .iter()
            .enumerate()
            .map(|(i, d)| describe(i + 1, d, whole))
            .collect()
    })
    .await
}

/// Whether `workflow` has a parked queue holding inputs of `run_id`.
pub(crate) async fn holds_run(
    context: &Context,
    workflow: &str,
    run_id: &str,
) -> anyhow::Result<bool> {
    let queue = parked_queue_name(context, workflow)?;
    if queue_stats(context, &queue)
        .await?
        .is_none_or(|(depth, _)| depth == 0)
    {
        return Ok(false);
    }
    let run = Selection::Run {
        run_id: run_id.to_owned(),
        step: None,
    };
    peek(context, workflow, |parked| {
        parked
            .iter()
            .enumerate()
            .any(|(i, d)| run.matches(i + 1, d))
    })
    .await
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

/// Sends the selected parked messages back to their steps. Fails with [`NoMatch`] if none
/// matched; a failed replay leaves every message it did not replay where it was.
pub(crate) async fn replay(
    context: &Context,
    workflow: &str,
    selection: Selection,
    progress: bool,
) -> anyhow::Result<Replayed> {
    let (queue, depth) = parked_queue(context, workflow).await?;
    let (connection, channel) = context.channel().await?;
    let replayed = replay_on(
        context, &channel, &queue, workflow, &selection, depth, progress,
    )
    .await;
    // Anything taken and neither acknowledged nor given back returns to the parked queue.
    let _ = connection.close(200, "replayed".into()).await;
    replayed
}

/// `inqubo parked ...`; returns the exit code.
pub(crate) async fn run(context: &Context, action: Action) -> anyhow::Result<i32> {
    match action {
        Action::List { workflow } => {
            // Scripts get every input whole; people get a line each.
            let rows = list(context, &workflow, context.json).await?;
            if context.json {
                println!("{}", serde_json::Value::Array(rows));
            } else if rows.is_empty() {
                println!("no parked message for workflow {workflow}");
            } else {
                for row in rows {
                    println!(
                        "{:>4}  run {} (generation {})  step {}  {}: {}  [{}]",
                        row["number"],
                        row["run_id"].as_str().unwrap_or("?"),
                        row["generation"],
                        row["step"].as_str().unwrap_or("?"),
                        row["reason"].as_str().unwrap_or("?"),
                        row["error"].as_str().unwrap_or(""),
                        row["message_id"].as_str().unwrap_or("no message id"),
                    );
                }
            }
        }
        Action::Show {
            workflow,
            number,
            message_id,
        } => {
            let selection = match (message_id, number) {
                (Some(id), _) => Selection::Message(id),
                (None, Some(number)) => Selection::Number(number),
                (None, None) => anyhow::bail!("name the message with --message-id"),
            };
            let shown = peek(context, &workflow, |parked| {
                parked
                    .iter()
                    .enumerate()
                    .find(|(i, d)| selection.matches(i + 1, d))
                    .map(|(i, d)| describe(i + 1, d, true))
            })
            .await?
            .with_context(|| {
                format!(
                    "there is no parked message {} in workflow `{workflow}`",
                    selection.describe()
                )
            })?;
            if context.json {
                println!("{shown}");
            } else {
                for (field, value) in shown.as_object().into_iter().flatten() {
                    match value {
                        serde_json::Value::String(text) => println!("{field:<12} {text}"),
                        other => println!("{field:<12} {other}"),
                    }
                }
            }
        }
        Action::Replay {
            workflow,
            which,
            step,
        } => {
            let selection = match which {
                Which {
                    run_id: Some(run_id),
                    ..
                } => Selection::Run { run_id, step },
                Which {
                    message_id: Some(id),
                    ..
                } => Selection::Message(id),
                Which {
                    number: Some(number),
                    ..
                } => Selection::Number(number),
                Which { all: true, .. } => Selection::All,
                Which { .. } => {
                    anyhow::bail!("say which messages: --run-id, --message-id or --all")
                }
            };
            let progress = std::io::stderr().is_terminal() && !context.json;
            let done = replay(context, &workflow, selection, progress).await?;
            if context.json {
                println!("{}", done.to_json());
            } else {
                println!("replayed {} message(s)", done.replayed);
                for kept in &done.kept {
                    println!(
                        "kept {} (run {}, step {}): {}",
                        kept["message_id"]
                            .as_str()
                            .unwrap_or("a message without id"),
                        kept["run_id"].as_str().unwrap_or("?"),
                        kept["step"].as_str().unwrap_or("?"),
                        kept["why"].as_str().unwrap_or_default()
                    );
                }
            }
            if done.replayed == 0 {
                return Ok(EXIT_NOTHING_CHANGED);
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
    Ok(0)
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

/// What to send back for each of the `chosen` messages (by index in `parked`): the inputs of
/// one run go back together, in one new generation (as `inqubo run resume` sends them);
/// `None` for those that cannot go back.
/// What to send for the `chosen` parked messages: each one's next attempt (by index), and
/// each replayed run's `run.resumed`, which goes first.
fn plan(
    workflow: &WorkflowName,
    parked: &[Incoming<'_>],
    chosen: &[usize],
) -> (BTreeMap<usize, Option<Outgoing>>, Vec<Outgoing>) {
    let mut runs: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut plan = BTreeMap::new();
    let mut announcements = Vec::new();
    for &i in chosen {
        match parked[i].run_id() {
            Ok(run) => runs.entry(run.to_string()).or_default().push(i),
            // No run to share a generation with: on its own.
            Err(_) => {
                let one = protocol::resume_run(workflow, std::slice::from_ref(&parked[i]));
                plan.insert(i, one.into_iter().next().flatten());
            }
        }
    }
    for indices in runs.into_values() {
        let inputs: Vec<Incoming<'_>> = indices.iter().map(|&i| parked[i].clone()).collect();
        let messages = protocol::resume_run(workflow, &inputs);
        let going = messages.iter().flatten().count();
        if let (Some(run), true) = (inputs.first().and_then(|p| p.run_id().ok()), going > 0) {
            let generation = protocol::next_generation(&inputs);
            announcements.push(protocol::run_resumed(workflow, &run, generation, going));
        }
        plan.extend(indices.into_iter().zip(messages));
    }
    (plan, announcements)
}

/// Why a parked message cannot go back to a step.
fn why_kept(parked: &Incoming<'_>) -> &'static str {
    if parked.headers.text(header::PARKED_REASON) == Some(FailureReason::RunCancelled.as_str()) {
        "its run was cancelled, so it would only be parked again"
    } else {
        "it names no step to go back to"
    }
}

async fn replay_on(
    context: &Context,
    channel: &Channel,
    queue: &str,
    workflow: &str,
    selection: &Selection,
    depth: usize,
    progress: bool,
) -> anyhow::Result<Replayed> {
    let topology = context.topology()?;
    let workflow_name: WorkflowName = workflow.parse().context("invalid workflow name")?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let taken = take(channel, queue, depth).await?;
    let chosen: Vec<usize> = (0..taken.len())
        .filter(|&i| selection.matches(i + 1, &taken[i]))
        .collect();
    if chosen.is_empty() {
        give_back(&taken).await?;
        return Err(NoMatch(format!(
            "no parked message {} in workflow `{workflow}`; nothing was replayed",
            selection.describe()
        ))
        .into());
    }
    let parked: Vec<Incoming<'_>> = taken.iter().map(wire::incoming).collect();
    let (mut plan, announcements) = plan(&workflow_name, &parked, &chosen);
    let mut done = Replayed::default();
    let mut confirmed = vec![false; taken.len()];
    let mut failure = None;
    // Runners hear of each replayed run's new generation before its inputs go back.
    for announcement in announcements {
        if let Err(error) = publish(channel, Wire::new(&topology, announcement, None)).await {
            give_back(&taken).await?;
            return Err(error.context(format!(
                "cannot announce the resume of a run of workflow `{workflow}`; nothing was \
                 replayed"
            )));
        }
    }
    let total = chosen.len();
    for &i in &chosen {
        let Some(message) = plan.remove(&i).flatten() else {
            let headers = taken[i].properties.headers().as_ref();
            done.kept.push(json!({
                "message_id": message_id(&taken[i]),
                "run_id": text(headers, header::RUN_ID),
                "step": text(headers, header::PARKED_STEP),
                "why": why_kept(&parked[i]),
            }));
            continue;
        };
        if failure.is_some() {
            continue;
        }
        let delivery = &taken[i];
        let step =
            text(delivery.properties.headers().as_ref(), header::PARKED_STEP).unwrap_or_default();
        let out = Wire::new(&topology, message, delivery.properties.headers().as_ref());
        match publish(channel, out).await {
            Ok(()) => {
                confirmed[i] = true;
                done.replayed += 1;
                if progress {
                    eprint!("\rreplayed {}/{total}", done.replayed);
                }
            }
            Err(error) => failure = Some((step, error)),
        }
    }
    if progress {
        eprintln!();
    }
    // Settle in queue order: the replayed copies go, every other message goes back, in its
    // order among the others.
    for (delivery, replayed) in taken.iter().zip(&confirmed) {
        if *replayed {
            delivery.ack(BasicAckOptions::default()).await?;
        } else {
            give_back([delivery]).await?;
        }
    }
    match failure {
        Some((step, error)) => Err(anyhow::anyhow!(
            "cannot replay to step `{step}` of workflow `{workflow}`: {error:#}; {} message(s) \
             replayed before that, the others stay parked where they were",
            done.replayed
        )),
        None => Ok(done),
    }
}

/// Publishes one replayed input and waits for the broker to confirm it in a queue.
async fn publish(channel: &Channel, out: Wire) -> anyhow::Result<()> {
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
        anyhow::bail!("the broker refused it");
    }
    if confirm.take_message().is_some() {
        anyhow::bail!("the step has no queue any more");
    }
    Ok(())
}
