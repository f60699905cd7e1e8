//! `inqubo`: the operator's command line for Inqubo workflows on RabbitMQ.
//!
//! Everything it shows comes from RabbitMQ itself: the workflows runners announced, queue
//! depths, live events, parked messages. `--json` prints machine-readable output.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod broker;
mod control;
mod dashboard;
mod history;
mod metric;
mod parked;
mod reshard;
mod schedule;
mod topology;
mod workflows;

use std::{io::IsTerminal, path::PathBuf, time::Duration};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use futures_util::StreamExt;
use inqubo::{EventKind, RunId, RunOutcome, WorkflowName};

/// The exit code of a request that changed nothing because of what it found: a cancel of a
/// run that had already ended, a resume of a run with nothing parked, a replay that sent
/// nothing back.
const EXIT_NOTHING_CHANGED: i32 = 3;
/// The exit code of a wait that ran out: `trigger --wait` past its timeout, a cancel no
/// runner answered in time (the request stays queued).
const EXIT_UNANSWERED: i32 = 2;

/// See and steer Inqubo workflows on RabbitMQ.
#[derive(Debug, Parser)]
#[command(name = "inqubo", version, about)]
struct Cli {
    /// The broker; several addresses of one cluster may be separated by commas.
    #[arg(long, global = true, env = "AMQP_URL", default_value = inqubo::DEFAULT_AMQP_URL, hide_env_values = true)]
    amqp_url: String,
    /// The name prefix runners use.
    #[arg(long, global = true, env = "INQUBO_PREFIX", default_value = inqubo::protocol::DEFAULT_PREFIX)]
    prefix: String,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

/// What `inqubo topology` may do besides showing.
#[derive(Debug, Subcommand)]
enum TopologyAction {
    /// Delete a workflow's own queues, messages included (its step, redelivered, parked,
    /// run-state and join queues); the shared queues and exchanges stay. Asks first.
    Delete {
        /// The workflow.
        workflow: String,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
        /// Delete even while runners consume the queues (they fail, reconnect and declare
        /// them again, empty).
        #[arg(long)]
        force: bool,
    },
    /// Raise how many shards each join of a workflow has (4 by default, at most 64), so that
    /// join work spreads over more runners; every open join moves to its new shard. Stop the
    /// workflow's runners first. Asks first.
    Reshard {
        /// The workflow.
        workflow: String,
        /// The new number of shards per join.
        #[arg(long)]
        join_shards: u32,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The workflows runners announced, with each step's queue depth and consumers.
    Workflows,
    /// The queues Inqubo declared under the prefix, what each is for, its depth and
    /// consumers: one workflow's (or every announced one's), then the shared ones.
    #[command(args_conflicts_with_subcommands = true)]
    Topology {
        /// Only this workflow's queues (and the shared ones).
        workflow: Option<String>,
        #[command(subcommand)]
        action: Option<TopologyAction>,
    },
    /// A workflow's graph.
    Show {
        /// The workflow.
        workflow: String,
        /// Print Graphviz DOT.
        #[arg(long)]
        dot: bool,
    },
    /// A workflow's cron schedules: list them with their next fire times, add and remove
    /// stored ones.
    Schedule {
        #[command(subcommand)]
        action: schedule::ScheduleAction,
    },
    /// Start a run; prints its run id.
    Trigger {
        /// The workflow.
        workflow: WorkflowName,
        /// The run id (default: a random one).
        #[arg(long)]
        run_id: Option<RunId>,
        /// The run input, as JSON (default `{}`).
        #[arg(long, conflicts_with = "input_file")]
        input: Option<String>,
        /// Read the run input from a JSON file.
        #[arg(long)]
        input_file: Option<PathBuf>,
        /// Wait for the run to end; exit non-zero if it failed or was cancelled. If the run id
        /// already has a run, no second one starts: wait for that one, or (if it has ended)
        /// say how it ended and exit 3.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds.
        #[arg(long, default_value_t = 300, requires = "wait")]
        timeout: u64,
        /// Start the run after this long (e.g. 90s, 15m, 2h, 7d; up to about 38 days): the
        /// broker holds the trigger. Cancel the run meanwhile and it never starts.
        #[arg(long = "in", value_name = "DURATION", value_parser = humantime::parse_duration, conflicts_with_all = ["at", "wait"])]
        after: Option<Duration>,
        /// Start the run at this time (RFC 3339, e.g. 2026-12-01T09:00:00Z), like --in.
        #[arg(long, value_name = "TIME", value_parser = humantime::parse_rfc3339_weak, conflicts_with = "wait")]
        at: Option<std::time::SystemTime>,
        /// The run's priority class (high, normal or low): in a workflow built with
        /// `.priorities(true)`, its steps are taken before lower classes' backlog.
        #[arg(long, conflicts_with_all = ["after", "at", "wait"])]
        priority: Option<inqubo::Priority>,
    },
    /// Follow lifecycle events live (leaves no queue behind).
    Watch {
        /// Only this workflow.
        workflow: Option<WorkflowName>,
        /// Only this run.
        #[arg(long)]
        run_id: Option<RunId>,
    },
    /// Record every run's events in a store, as run history (SQLite or PostgreSQL).
    Monitor {
        /// The store: `sqlite://inqubo.db` or `postgres://user@host/db`.
        #[arg(long, env = "INQUBO_STORE", default_value = "sqlite://inqubo.db")]
        store: String,
        /// Delete runs that finished longer ago than this (e.g. 7d, 12h).
        #[arg(long, default_value = "30d")]
        retention: String,
        /// Serve the dashboard, its JSON API and Prometheus `/metrics` on this address
        /// (e.g. 127.0.0.1:8080; port 0 picks a free one). Another interface needs --token;
        /// without one, only this machine is served.
        #[arg(long, num_args = 0..=1, default_missing_value = "127.0.0.1:8080")]
        listen: Option<std::net::SocketAddr>,
        /// Require `Authorization: Bearer <token>` on the API (and so on the dashboard's
        /// data and buttons).
        #[arg(
            long,
            env = "INQUBO_TOKEN",
            hide_env_values = true,
            requires = "listen"
        )]
        token: Option<String>,
        /// Serve the dashboard to other machines without a token: anyone who can reach it
        /// reads every run's data and may replay or purge parked messages. For a network
        /// that is yours alone.
        #[arg(long, requires = "listen")]
        allow_network_without_token: bool,
        /// The most events the monitor's queue holds while no monitor reads it; past it the
        /// oldest are dropped (and missing from the history), so that a monitor left stopped
        /// never fills the broker. Applies when the queue is first declared.
        #[arg(long, default_value_t = history::DEFAULT_MAX_BACKLOG)]
        max_backlog: u32,
    },
    /// Runs from the history, newest first.
    Runs {
        /// The store the monitor writes.
        #[arg(long, env = "INQUBO_STORE", default_value = "sqlite://inqubo.db")]
        store: String,
        /// Only this workflow.
        #[arg(long)]
        workflow: Option<String>,
        /// Only this status: running, retrying, succeeded, failed or cancelled (that of the
        /// run's latest generation).
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(history::query::RUN_STATUSES))]
        status: Option<String>,
        /// Only runs updated within this long (e.g. 30m, 2h, 7d).
        #[arg(long)]
        since: Option<String>,
    },
    /// One run from the history: its status and every step attempt (`inqubo run RUN_ID`);
    /// or `inqubo run resume RUN_ID`.
    Run(RunArgs),
    /// Cancel a run: steps not started yet never start, running ones are told, and the run
    /// ends with `run.cancelled`. Exits 3 if the run had already ended, 2 if no runner
    /// answered in time (the request stays queued).
    Cancel {
        /// The run id.
        run_id: RunId,
        /// The run's workflow (default: from the store if given, else the only announced one).
        #[arg(long)]
        workflow: Option<WorkflowName>,
        /// Why, as the `run.cancelled` event will say.
        #[arg(long, default_value = "cancelled with inqubo cancel")]
        reason: String,
        /// How long to wait for a runner to answer (e.g. 30s, 2m).
        #[arg(long, default_value = "30s")]
        timeout: String,
        /// A history store to look the run's workflow up in.
        #[arg(long, env = "INQUBO_STORE")]
        store: Option<String>,
    },
    /// Parked messages: inputs that failed for good.
    Parked {
        #[command(subcommand)]
        action: parked::Action,
    },
}

/// `inqubo run RUN_ID` shows a run from the history; `inqubo run resume RUN_ID` resumes one
/// (a run id that is literally `resume` is shown with `inqubo run -- resume`).
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct RunArgs {
    #[command(subcommand)]
    action: Option<RunAction>,
    /// The run id.
    #[arg(required = true)]
    run_id: Option<String>,
    /// The store the monitor writes.
    #[arg(long, env = "INQUBO_STORE", default_value = "sqlite://inqubo.db")]
    store: String,
}

#[derive(Debug, Subcommand)]
enum RunAction {
    /// Resume a failed run: its parked inputs go back to their steps as the next attempts of
    /// the run's next generation. Exits 3 if the run has nothing parked.
    Resume {
        /// The run id.
        run_id: RunId,
        /// The run's workflow (default: from the store if given, else the announced workflow
        /// whose parked queue holds the run's inputs).
        #[arg(long)]
        workflow: Option<WorkflowName>,
        /// A history store to look the run's workflow up in.
        #[arg(long, env = "INQUBO_STORE")]
        store: Option<String>,
    },
}

#[tokio::main]
async fn main() {
    // Output piped into `head` and the like ends quietly, as with other command-line tools,
    // instead of panicking on the closed pipe.
    sigpipe::reset();
    let telemetry = init_logging();
    let cli = Cli::parse();
    let code = match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            1
        }
    };
    // Flushes the spans not yet exported, which `exit` would skip.
    drop(telemetry);
    std::process::exit(code);
}

/// Logs to stderr; with the `otel` feature and `OTEL_EXPORTER_OTLP_ENDPOINT` set, also exports
/// spans over OTLP/HTTP until the returned guard drops.
fn init_logging() -> Option<Box<dyn std::any::Any>> {
    #[cfg(feature = "otel")]
    if let Ok(endpoint) = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        match inqubo::otel::init_otlp("inqubo-cli", &endpoint) {
            Ok(guard) => return Some(Box::new(guard)),
            Err(error) => eprintln!("warning: not exporting spans: {error}"),
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("inqubo=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    None
}

/// Runs the command; returns the process exit code.
async fn run(cli: Cli) -> anyhow::Result<i32> {
    let context = broker::Context {
        url: cli.amqp_url.clone(),
        prefix: cli.prefix.clone(),
        json: cli.json,
    };
    match cli.command {
        Command::Workflows => workflows::list(&context).await.map(|()| 0),
        Command::Topology {
            workflow,
            action: None,
        } => topology::show(&context, workflow.as_deref())
            .await
            .map(|()| 0),
        Command::Topology {
            action:
                Some(TopologyAction::Delete {
                    workflow,
                    yes,
                    force,
                }),
            ..
        } => topology::delete(&context, &workflow, yes, force).await,
        Command::Topology {
            action:
                Some(TopologyAction::Reshard {
                    workflow,
                    join_shards,
                    yes,
                }),
            ..
        } => reshard::reshard(&context, &workflow, join_shards, yes).await,
        Command::Schedule { action } => schedule::run(&context, action).await,
        Command::Show { workflow, dot } => {
            workflows::show(&context, &workflow, dot).await.map(|()| 0)
        }
        Command::Trigger {
            workflow,
            run_id,
            input,
            input_file,
            wait,
            timeout,
            after,
            at,
            priority,
        } => {
            use tracing::Instrument;
            // With OpenTelemetry on, the run's trace starts with this span.
            let span = tracing::info_span!(target: "inqubo::cli", "inqubo trigger", %workflow);
            let start = match (after, at) {
                (Some(delay), _) => Start::After(delay),
                (None, Some(at)) => Start::After(
                    at.duration_since(std::time::SystemTime::now())
                        .unwrap_or_default(),
                ),
                (None, None) => match (wait, priority) {
                    (true, _) => Start::NowAndWait(Duration::from_secs(timeout)),
                    (false, Some(priority)) => Start::Prioritized(priority),
                    (false, None) => Start::Now,
                },
            };
            trigger(&context, &workflow, run_id, input, input_file, start)
                .instrument(span)
                .await
        }
        Command::Watch { workflow, run_id } => watch(&context, workflow, run_id).await.map(|()| 0),
        Command::Parked { action } => parked::run(&context, action).await,
        Command::Cancel {
            run_id,
            workflow,
            reason,
            timeout,
            store,
        } => {
            let timeout = history::parse_age(&timeout)?;
            control::cancel_command(
                &context,
                &run_id,
                workflow,
                store.as_deref(),
                &reason,
                timeout,
            )
            .await
        }
        Command::Monitor {
            store,
            retention,
            listen,
            token,
            allow_network_without_token,
            max_backlog,
        } => {
            let options = history::MonitorOptions {
                store,
                retention: history::parse_age(&retention)?,
                listen,
                token: token.filter(|t| !t.is_empty()),
                open_to_network: allow_network_without_token,
                max_backlog,
            };
            history::monitor(&context, options).await.map(|()| 0)
        }
        Command::Runs {
            store,
            workflow,
            status,
            since,
        } => {
            let since = since.as_deref().map(history::parse_age).transpose()?;
            let filter = history::query::RunFilter {
                workflow: workflow.unwrap_or_default(),
                status: status.unwrap_or_default(),
                search: String::new(),
                since_ms: since.map_or(0, |age| {
                    history::now_ms() - i64::try_from(age.as_millis()).unwrap_or(i64::MAX)
                }),
            };
            history::runs(&context, &store, filter).await.map(|()| 0)
        }
        Command::Run(RunArgs {
            action:
                Some(RunAction::Resume {
                    run_id,
                    workflow,
                    store,
                }),
            ..
        }) => control::resume_command(&context, &run_id, workflow, store.as_deref()).await,
        Command::Run(RunArgs { run_id, store, .. }) => {
            let run_id = run_id.context("give a run id")?;
            history::run(&context, &store, &run_id).await
        }
    }
}

/// When `inqubo trigger` starts the run.
enum Start {
    /// Now.
    Now,
    /// Now, and wait up to this long for its end.
    NowAndWait(Duration),
    /// After this delay, held by the broker.
    After(Duration),
    /// Now, in this priority class.
    Prioritized(inqubo::Priority),
}

async fn trigger(
    context: &broker::Context,
    workflow: &WorkflowName,
    run_id: Option<RunId>,
    input: Option<String>,
    input_file: Option<PathBuf>,
    start: Start,
) -> anyhow::Result<i32> {
    let text = match (input, input_file) {
        (Some(text), _) => text,
        (None, Some(path)) => std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        (None, None) => "{}".to_owned(),
    };
    let input: serde_json::Value = serde_json::from_str(&text)
        .context("the input is not valid JSON; nothing was published")?;
    let run_id = run_id.unwrap_or_else(RunId::random);
    let client = context.client().await?;
    let wait = match start {
        Start::After(delay) => {
            let run_id = client
                .trigger_after(workflow, run_id, &input, delay)
                .await?;
            let at = humantime::format_rfc3339_seconds(std::time::SystemTime::now() + delay);
            if context.json {
                println!(
                    "{}",
                    serde_json::json!({"run_id": run_id.as_str(), "starts_at": at.to_string()})
                );
            } else {
                println!("{run_id}");
                eprintln!(
                    "run {run_id} of workflow {workflow} starts at {at} (in {}); `inqubo cancel {run_id}` keeps it from starting",
                    humantime::format_duration(Duration::from_secs(delay.as_secs()))
                );
            }
            return Ok(0);
        }
        Start::Prioritized(priority) => {
            let run_id = client
                .trigger_with_priority(workflow, run_id, &input, priority)
                .await?;
            if context.json {
                println!(
                    "{}",
                    serde_json::json!({"run_id": run_id.as_str(), "priority": priority.as_str()})
                );
            } else {
                println!("{run_id}");
            }
            return Ok(0);
        }
        Start::Now => None,
        Start::NowAndWait(timeout) => Some(timeout),
    };
    let Some(timeout) = wait else {
        let run_id = client.trigger(workflow, run_id, &input).await?;
        if context.json {
            println!("{}", serde_json::json!({"run_id": run_id.as_str()}));
        } else {
            println!("{run_id}");
        }
        return Ok(0);
    };
    if !context.json {
        eprintln!(
            "triggered {run_id}; waiting for it to end (up to {}s)",
            timeout.as_secs()
        );
    }
    let waiting = client.trigger_and_wait(workflow, run_id.clone(), &input, timeout);
    let progress = async {
        if !std::io::stderr().is_terminal() {
            return std::future::pending::<()>().await;
        }
        let started = std::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            eprint!(
                "\rrun {run_id} running for {:.0} s ",
                started.elapsed().as_secs_f64()
            );
        }
    };
    let outcome = tokio::select! {
        outcome = waiting => outcome,
        () = progress => unreachable!("the progress display never ends"),
    };
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    match outcome {
        Ok(RunOutcome::Succeeded(outputs)) => {
            if context.json {
                println!(
                    "{}",
                    serde_json::json!({"run_id": run_id, "status": "succeeded", "outputs": outputs})
                );
            } else {
                println!("run {run_id} succeeded: {outputs}");
            }
            Ok(0)
        }
        Ok(RunOutcome::Failed(failure)) => {
            if context.json {
                println!(
                    "{}",
                    serde_json::json!({"run_id": run_id, "status": "failed", "failure": failure})
                );
            } else {
                println!(
                    "run {run_id} failed: step {} ({}, attempt {}): {}",
                    failure.step, failure.reason, failure.attempt, failure.error
                );
            }
            Ok(1)
        }
        Ok(RunOutcome::Cancelled(cancelled)) => {
            if context.json {
                println!(
                    "{}",
                    serde_json::json!({"run_id": run_id, "status": "cancelled", "cancelled": cancelled})
                );
            } else {
                println!("run {run_id} was cancelled: {}", cancelled.reason);
            }
            Ok(1)
        }
        Ok(other) => {
            println!("run {run_id} ended: {other:?}");
            Ok(1)
        }
        Err(inqubo::Error::RunTimeout { .. }) => {
            eprintln!("run {run_id} did not end within {} s", timeout.as_secs());
            Ok(EXIT_UNANSWERED)
        }
        Err(inqubo::Error::RunExists {
            state, generation, ..
        }) => {
            if context.json {
                println!(
                    "{}",
                    serde_json::json!({"run_id": run_id, "status": "duplicate", "existing": state, "generation": generation})
                );
            } else {
                println!(
                    "run {run_id} already exists and has {state} (generation {generation}); no \
                     second run was started (see `inqubo run {run_id}`; resume it if it failed)"
                );
            }
            Ok(EXIT_NOTHING_CHANGED)
        }
        Err(error) => Err(error.into()),
    }
}

async fn watch(
    context: &broker::Context,
    workflow: Option<WorkflowName>,
    run_id: Option<RunId>,
) -> anyhow::Result<()> {
    let client = context.client().await?;
    let mut events = client.subscribe(workflow.as_ref()).await?;
    let colour = std::io::stdout().is_terminal() && !context.json;
    // On stderr even with --json, so that scripts can tell when the subscription is bound.
    eprintln!(
        "watching {} (Ctrl-C stops)",
        workflow
            .as_ref()
            .map_or("every workflow".to_owned(), |w| format!("workflow {w}"))
    );
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(event) = event else {
            anyhow::bail!("the event stream ended (connection lost?)");
        };
        let event = event?;
        if run_id.as_ref().is_some_and(|id| *id != event.run_id) {
            continue;
        }
        // When the event reached this watcher, in UTC to the millisecond.
        let at = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        if context.json {
            println!(
                "{}",
                serde_json::json!({
                    "at": at.to_string(),
                    "workflow": event.workflow, "step": event.step, "event": event.kind,
                    "run_id": event.run_id, "attempt": event.attempt, "body": event.body,
                    "map_index": event.element.map(|e| e.index),
                    "map_size": event.element.map(|e| e.size),
                })
            );
        } else if colour {
            let code = match event.kind {
                EventKind::Succeeded | EventKind::RunSucceeded => "32",
                EventKind::Failed | EventKind::RunFailed => "31",
                EventKind::Retrying => "33",
                EventKind::Skipped | EventKind::RunCancelled => "35",
                _ => "36",
            };
            println!("{at} \x1b[{code}m{event}\x1b[0m");
        } else {
            println!("{at} {event}");
        }
    }
}
