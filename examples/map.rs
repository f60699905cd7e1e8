//! A map: workflow `thumbnails`, where `resize` runs once per file of a list whose length is
//! known only at run time, and `index` receives every result, in the order of the list.
//!
//! ```text
//!                 ┌▶ resize[0] ─┐
//! list_files ─────┼▶ resize[1] ─┼▶ index
//!                 └▶ resize[…] ─┘
//! ```
//!
//! `list_files` returns a `Vec<File>`; `resize` takes one `File` and returns a `Thumbnail`;
//! `index` takes the `Vec<Thumbnail>`, all checked by the compiler. Each element is a message
//! of its own on `resize`'s queue, so every runner takes a share of them; each has its own
//! attempts, retries and events (marked `map-index`). See docs/map.md.
//!
//! `cargo run --example map` starts a runner, triggers one run with
//! `Runner::trigger_and_wait`, prints its events and exits 0 on `thumbnails.run.succeeded`;
//! `--serve` runs until Ctrl-C or SIGTERM. The broker is `AMQP_URL` (default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`), the prefix `INQUBO_PREFIX` (default `inqubo`).

#![allow(clippy::print_stdout)]

use std::time::Duration;

use futures_util::StreamExt;
use inqubo::{
    EventStream, RetryPolicy, RunId, RunOutcome, RunnerBuilder, Step, StepContext, StepError,
    Workflow,
};
use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// What a run is asked to do: make thumbnails of the files in a folder.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    folder: String,
    files: u32,
}

/// One file to resize.
#[derive(Debug, Serialize, Deserialize)]
struct File {
    path: String,
    bytes: u64,
}

/// A resized file.
#[derive(Debug, Serialize, Deserialize)]
struct Thumbnail {
    path: String,
    bytes: u64,
}

/// Lists the folder: how many files there are is known only now.
async fn list_files(request: Request, _ctx: StepContext) -> Result<Vec<File>, StepError> {
    Ok((0..request.files)
        .map(|n| File {
            path: format!("{}/photo-{n}.jpg", request.folder),
            bytes: 1_000_000 + u64::from(n) * 1_000,
        })
        .collect())
}

/// Resizes one file (here: pretends to, in a few milliseconds).
async fn resize(file: File, _ctx: StepContext) -> Result<Thumbnail, StepError> {
    tokio::time::sleep(Duration::from_millis(5)).await;
    Ok(Thumbnail {
        path: file.path.replace(".jpg", ".thumb.jpg"),
        bytes: file.bytes / 20,
    })
}

/// The index of every thumbnail, in the order of the list.
#[derive(Debug, Serialize, Deserialize)]
struct Index {
    thumbnails: usize,
    bytes: u64,
    first: Option<String>,
}

/// Receives every thumbnail, in the order of the files.
async fn index(thumbnails: Vec<Thumbnail>, _ctx: StepContext) -> Result<Index, StepError> {
    Ok(Index {
        thumbnails: thumbnails.len(),
        bytes: thumbnails.iter().map(|t| t.bytes).sum(),
        first: thumbnails.first().map(|t| t.path.clone()),
    })
}

/// The workflow `thumbnails`.
fn workflow() -> Result<Workflow, inqubo::WorkflowError> {
    Workflow::builder("thumbnails")
        .start(Step::new("list_files", list_files))
        .map(Step::new("resize", resize).retry(RetryPolicy::limited(3, Duration::from_secs(1))))
        .reduce(Step::new("index", index))
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
    let order = Request {
        folder: "holiday".to_owned(),
        files: 8,
    };
    println!("triggered run {run_id} of workflow thumbnails");
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
                "usage: map [--serve]\n\nenvironment: AMQP_URL (default {}), INQUBO_PREFIX (default inqubo)",
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
        println!("serving workflow thumbnails (Ctrl-C stops)");
        runner.run(inqubo::shutdown_signal()).await?;
        return Ok(());
    }
    let outputs = demo(settings).await?;
    println!("run succeeded: {outputs}");
    Ok(())
}

#[tokio::test]
async fn map_resizes_every_file_and_indexes_them_in_order() {
    let broker = inqubo_testkit::TestBroker::new();
    let flow = workflow().unwrap();
    let outputs = demo(broker.runner(&flow)).await.unwrap();
    assert_eq!(
        outputs,
        serde_json::json!({"index": {
            "thumbnails": 8,
            "bytes": 401_400,
            "first": "holiday/photo-0.thumb.jpg",
        }})
    );
}
