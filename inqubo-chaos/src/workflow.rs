//! The workflows under test. Their steps take a few milliseconds, so that kills land in the
//! middle of attempts, and fail now and then on purpose, so that retries are in flight too.
//!
//! ```text
//! fanout:   ingest ─┬▶ enrich ─▶ store        diamond:  ingest ─┬▶ price ─┐
//!                   └▶ notify                                   └▶ pack ──┴▶ invoice
//! ```

use std::time::Duration;

use inqubo::{RetryPolicy, Step, StepContext, StepError, Workflow};

/// The join step of the diamond, whose starts are counted.
pub(crate) const JOIN_STEP: &str = "invoice";

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

async fn invoice((price, pack): (u64, u64), ctx: StepContext) -> Result<u64, StepError> {
    work(price.max(pack), &ctx).await
}

/// The chaos workflow named `name`: `fanout` or `diamond`.
pub(crate) fn build(name: &str) -> Result<Workflow, inqubo::WorkflowError> {
    let retry = || RetryPolicy::limited(5, Duration::from_millis(200));
    if name == "diamond" {
        return Workflow::builder("diamond")
            .start(Step::new("ingest", ingest).retry(retry()))
            .then((
                Step::new("price", enrich).retry(retry()),
                Step::new("pack", notify).retry(retry()),
            ))
            .then(Step::new(JOIN_STEP, invoice).retry(retry()))
            .build();
    }
    Workflow::builder("fanout")
        .start(Step::new("ingest", ingest).retry(retry()))
        .then((
            inqubo::Chain::new(Step::new("enrich", enrich).retry(retry()))
                .then(Step::new("store", store).retry(retry())),
            Step::new("notify", notify).retry(retry()),
        ))
        .build()
}
