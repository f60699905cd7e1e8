//! A join: workflow `diamond`, where `d` waits for both `b` and `c`.
//!
//! ```text
//!    ┌▶ b ─┐
//! a ─┤     ├▶ d
//!    └▶ c ─┘
//! ```
//!
//! `d` receives the tuple `(b's output, c's output)`, checked by the compiler. The join state
//! lives in RabbitMQ (see docs/joins.md), so any runner may hold it and a killed runner loses
//! nothing.
//!
//! `cargo run --example diamond` starts a runner, triggers one run with
//! `Runner::trigger_and_wait`, prints its events and exits 0 on `diamond.run.succeeded`; `--serve` runs until Ctrl-C or SIGTERM. The broker is
//! `AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`), the prefix `INQUBO_PREFIX`
//! (default `inqubo`).

#![allow(clippy::print_stdout)]

use std::time::Duration;

use futures_util::StreamExt;
use inqubo::{
    EventStream, RetryPolicy, RunId, RunOutcome, RunnerBuilder, Step, StepContext, StepError,
    Workflow,
};
use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    items: Vec<u32>,
}

async fn a(order: Order, _ctx: StepContext) -> Result<Vec<u32>, StepError> {
    Ok(order.items)
}

/// The total price.
async fn b(items: Vec<u32>, _ctx: StepContext) -> Result<u32, StepError> {
    Ok(items.iter().sum())
}

/// The number of parcels: one per three items.
async fn c(items: Vec<u32>, _ctx: StepContext) -> Result<usize, StepError> {
    Ok(items.len().div_ceil(3))
}

#[derive(Debug, Serialize, Deserialize)]
struct Invoice {
    total: u32,
    parcels: usize,
}

/// Joins `b` and `c`.
async fn d((total, parcels): (u32, usize), _ctx: StepContext) -> Result<Invoice, StepError> {
    Ok(Invoice { total, parcels })
}

/// The workflow `diamond`.
fn workflow() -> Result<Workflow, inqubo::WorkflowError> {
    let retry = || RetryPolicy::limited(3, Duration::from_secs(1));
    Workflow::builder("diamond")
        .start(Step::new("a", a))
        .then((
            Step::new("b", b).retry(retry()),
            Step::new("c", c).retry(retry()),
        ))
        .then(Step::new("d", d))
        .build()
}

/// How long the demo run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Triggers one run, prints its events and returns its outputs.
async fn demo(settings: RunnerBuilder) -> anyhow::Result<serde_json::Value> {
    let runner = settings.connect().await?;
    let mut events = runner
        .client()
        .subscribe(Some(runner.workflow().name()))
        .await?;
    let run_id = RunId::random();
    let order = Order {
        items: vec![3, 5, 7, 11],
    };
    println!("triggered run {run_id} of workflow diamond");
    let (outcome, printed) = tokio::join!(
        runner.trigger_and_wait(run_id.clone(), &order, RUN_TIMEOUT),
        tokio::time::timeout(RUN_TIMEOUT, print_events(&mut events, &run_id)),
    );
    runner.shutdown().await?;
    let outputs = match outcome {
        Ok(RunOutcome::Succeeded(outputs)) => outputs,
        Ok(RunOutcome::Failed(failure)) => anyhow::bail!(
            "run failed: step {} ({}): {}",
            failure.step,
            failure.reason,
            failure.error
        ),
        Ok(other) => anyhow::bail!("run {run_id} ended: {other:?}"),
        Err(inqubo::Error::RunTimeout { .. }) => {
            anyhow::bail!("run {run_id} did not finish within 60 s")
        }
        Err(error) => return Err(error.into()),
    };
    printed.map_err(|_| anyhow::anyhow!("the events of run {run_id} stopped arriving"))??;
    Ok(outputs)
}

/// Prints the events of run `run_id` as they arrive, up to its end.
async fn print_events(events: &mut EventStream, run_id: &RunId) -> anyhow::Result<()> {
    while let Some(event) = events.next().await {
        let event = event?;
        if event.run_id != *run_id {
            continue;
        }
        println!("{event}");
        if event.kind.is_run_event() && event.kind.is_terminal() {
            return Ok(());
        }
    }
    anyhow::bail!("event stream ended")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("inqubo=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let serve = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--serve") => true,
        Some("-h" | "--help") => {
            println!(
                "usage: diamond [--serve]\n\nenvironment: AMQP_URL (default {}), INQUBO_PREFIX (default inqubo)",
                inqubo::DEFAULT_AMQP_URL
            );
            return Ok(());
        }
        Some(other) => anyhow::bail!("unknown argument {other}; try --help"),
    };
    // AMQP_URL, INQUBO_PREFIX and the other variables `RunnerBuilder::from_env` documents.
    let settings = RunnerBuilder::from_env(workflow()?)?;
    if serve {
        let runner = settings.connect().await?;
        println!("serving workflow diamond (Ctrl-C stops)");
        runner.run(inqubo::shutdown_signal()).await?;
        return Ok(());
    }
    let outputs = demo(settings).await?;
    println!("run succeeded: {outputs}");
    Ok(())
}

#[tokio::test]
async fn diamond_joins_both_branches() {
    let broker = inqubo_testkit::TestBroker::new();
    let flow = workflow().unwrap();
    let outputs = demo(broker.runner(&flow)).await.unwrap();
    assert_eq!(
        outputs,
        serde_json::json!({"d": {"total": 26, "parcels": 2}})
    );
}
