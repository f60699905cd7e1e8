//! The quickstart: workflow `simple`, four steps, one of them in parallel with another.
//!
//! ```text
//! get_data ─▶ process_data ─┬▶ load_data_to_external_system
//!                           └▶ load_data_to_internal_system
//! ```
//!
//! `cargo run --example quickstart` starts a runner, triggers one run with
//! `Runner::trigger_and_wait`, prints each lifecycle event of the run as it happens, and exits
//! 0 once the run reported `simple.run.succeeded`.
//! `cargo run --example quickstart -- --serve` runs the runner until Ctrl-C or SIGTERM, so that
//! other clients can trigger runs (see docs/protocol.md).
//!
//! `process_data` fails on purpose for its first `n` attempts when the run input is
//! `{"fail_times": n}` (the demo run uses `--fail-times`, default 1), and retries one second
//! later, so the retry shows within seconds. The broker is `AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`; the name prefix is `INQUBO_PREFIX`, default `inqubo`.

#![allow(clippy::print_stdout)]

use std::time::Duration;

use futures_util::StreamExt;
use inqubo::{
    EventStream, NoRetries, RetryPolicy, RunId, RunOutcome, RunnerBuilder, Step, StepContext,
    StepError, Workflow,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing_subscriber::EnvFilter;

/// The run input.
#[derive(Debug, Default, Serialize, Deserialize)]
struct RunInput {
    /// How many attempts of `process_data` fail on purpose.
    #[serde(default)]
    fail_times: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct Data {
    readings: Vec<f64>,
    fail_times: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct Processed {
    count: usize,
    mean: f64,
}

async fn get_data(input: RunInput, _ctx: StepContext) -> Result<Data, StepError> {
    Ok(Data {
        readings: vec![12.5, 14.0, 13.25, 15.75],
        fail_times: input.fail_times,
    })
}

async fn process_data(data: Data, ctx: StepContext) -> Result<Processed, StepError> {
    if ctx.attempt <= data.fail_times {
        return Err(StepError::retryable(format!(
            "failing on purpose ({} of {})",
            ctx.attempt, data.fail_times
        )));
    }
    let count = data.readings.len();
    let mean = data.readings.iter().sum::<f64>() / count.max(1) as f64;
    Ok(Processed { count, mean })
}

async fn load_data_to_external_system(p: Processed, ctx: StepContext) -> Result<(), StepError> {
    // A real system would send `ctx.idempotency_key()` along, so a redelivery is harmless.
    tracing::info!(key = %ctx.idempotency_key(), count = p.count, "loaded externally");
    Ok(())
}

async fn load_data_to_internal_system(p: Processed, _ctx: StepContext) -> Result<f64, StepError> {
    Ok(p.mean)
}

/// The workflow `simple`.
fn workflow() -> Result<Workflow, inqubo::WorkflowError> {
    Workflow::builder("simple")
        .start(Step::new("get_data", get_data))
        .then(
            Step::new("process_data", process_data)
                .retry(RetryPolicy::limited(3, Duration::from_secs(1))),
        )
        .then((
            Step::new("load_data_to_external_system", load_data_to_external_system)
                .retry(NoRetries),
            Step::new("load_data_to_internal_system", load_data_to_internal_system),
        ))
        .build()
}

/// How long the demo run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Triggers one run, prints its events as they happen and waits for its end.
async fn demo(settings: RunnerBuilder, fail_times: u32) -> anyhow::Result<()> {
    let runner = settings.connect().await?;
    let mut events = runner
        .client()
        .subscribe(Some(runner.workflow().name()))
        .await?;
    let run_id = RunId::random();
    let input = json!({ "fail_times": fail_times });
    println!("triggered run {run_id} of workflow simple");
    let (outcome, printed) = tokio::join!(
        runner.trigger_and_wait(run_id.clone(), &input, RUN_TIMEOUT),
        tokio::time::timeout(RUN_TIMEOUT, print_events(&mut events, &run_id)),
    );
    runner.shutdown().await?;
    match outcome {
        Ok(RunOutcome::Succeeded(_)) => {}
        Ok(RunOutcome::Failed(failure)) => anyhow::bail!("step {} failed", failure.step),
        Ok(other) => anyhow::bail!("run {run_id} ended: {other:?}"),
        Err(inqubo::Error::RunTimeout { .. }) => {
            anyhow::bail!("run {run_id} did not finish within 60 s")
        }
        Err(error) => return Err(error.into()),
    }
    printed.map_err(|_| anyhow::anyhow!("the events of run {run_id} stopped arriving"))??;
    println!("run {run_id} succeeded");
    Ok(())
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

/// Serves until Ctrl-C or SIGTERM.
async fn serve(settings: RunnerBuilder) -> anyhow::Result<()> {
    let runner = settings.connect().await?;
    println!(
        "serving workflow simple; trigger runs with routing key simple.run.triggered (Ctrl-C stops)"
    );
    runner.run(inqubo::shutdown_signal()).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("inqubo=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut serve_mode = false;
    let mut fail_times = 1;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--serve" => serve_mode = true,
            "--fail-times" => {
                fail_times = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| anyhow::anyhow!("--fail-times takes a number"))?;
            }
            "-h" | "--help" => {
                println!(
                    "usage: quickstart [--serve] [--fail-times N]\n\n\
                     environment: AMQP_URL (default {}), INQUBO_PREFIX (default inqubo)",
                    inqubo::DEFAULT_AMQP_URL
                );
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other}; try --help"),
        }
    }
    // AMQP_URL, INQUBO_PREFIX and the other variables `RunnerBuilder::from_env` documents.
    let settings = RunnerBuilder::from_env(workflow()?)?;
    if serve_mode {
        serve(settings).await
    } else {
        demo(settings, fail_times).await
    }
}

#[tokio::test]
async fn quickstart_run_retries_then_succeeds() {
    let broker = inqubo_testkit::TestBroker::new();
    let flow = workflow().unwrap();
    demo(broker.runner(&flow), 1).await.unwrap();
}
