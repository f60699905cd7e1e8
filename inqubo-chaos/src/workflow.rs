//! The workflow under test: a fan-out whose steps take a few milliseconds, so that kills land
//! in the middle of attempts, and which fails now and then on purpose, so that retries are in
//! flight too.
//!
//! ```text
//! ingest ─┬▶ enrich ─▶ store
//!         └▶ notify
//! ```

use std::time::Duration;

use inqubo::{RetryPolicy, Step, StepContext, StepError, Workflow};

/// The workflow's name.
pub(crate) const NAME: &str = "chaos";

/// The steps whose success completes a run.
pub(crate) const LEAVES: [&str; 2] = ["store", "notify"];

async fn work(n: u64, ctx: &StepContext) -> Result<u64, StepError> {
    tokio::time::sleep(Duration::from_millis(2 + n % 9)).await;
    // Every 20th run fails its first attempt of each step, to keep retries in flight.
    if n.is_multiple_of(20) && ctx.attempt == 1 {
        return Err(StepError::retryable("failing once on purpose"));
    }
    Ok(n)
}

async fn ingest(n: u64, ctx: StepContext) -> Result<u64, StepError> {
    work(n, &ctx).await
}

async fn enrich(n: u64, ctx: StepContext) -> Result<u64, StepError> {
    work(n, &ctx).await
}

async fn store(n: u64, ctx: StepContext) -> Result<u64, StepError> {
    work(n, &ctx).await
}

async fn notify(n: u64, ctx: StepContext) -> Result<u64, StepError> {
    work(n, &ctx).await
}

/// The chaos workflow.
pub(crate) fn build() -> Result<Workflow, inqubo::WorkflowError> {
    let retry = || RetryPolicy::limited(5, Duration::from_millis(200));
    Workflow::builder(NAME)
        .start(Step::new("ingest", ingest).retry(retry()))
        .then((
            inqubo::Chain::new(Step::new("enrich", enrich).retry(retry()))
                .then(Step::new("store", store).retry(retry())),
            Step::new("notify", notify).retry(retry()),
        ))
        .build()
}
