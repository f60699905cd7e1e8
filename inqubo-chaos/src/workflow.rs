//! The workflows under test. Their steps take a few milliseconds, so that kills land in the
//! middle of attempts, and fail now and then on purpose, so that retries are in flight too.
//!
//! ```text
//! fanout:   ingest ─┬▶ enrich ─▶ store        diamond:  ingest ─┬▶ price ─┐
//!                   └▶ notify                                   └▶ pack ──┴▶ invoice
//!
//! map:      split ─▶ resize × 100 ─▶ collect  (a map of 100 elements per run, then its reduce)
//! ```
//!
//! A run's input is a number, passed on unchanged from step to step, and it selects what the
//! steps do: its low 32 bits are the run's sequence number (how long each step sleeps; every
//! 20th run fails the first attempt of each step, retryably), and the bits above name a step
//! that fails fatally on its first attempt (see [`input`]), so that the run fails and can be
//! resumed. Runs without such a step have plain sequence numbers as inputs.

use std::time::Duration;

use inqubo::{RetryPolicy, Step, StepContext, StepError, Workflow};

/// The join step of the diamond, whose starts are counted.
pub(crate) const JOIN_STEP: &str = "invoice";

/// The reduce of the map workflow, whose starts are counted.
pub(crate) const REDUCE_STEP: &str = "collect";

/// How many elements the map workflow's list has.
pub(crate) const MAP_WIDTH: usize = 100;

/// The steps of each workflow, in the order [`input`] numbers them.
const FANOUT_STEPS: [&str; 4] = ["ingest", "enrich", "store", "notify"];
const DIAMOND_STEPS: [&str; 4] = ["ingest", "price", "pack", JOIN_STEP];
const MAP_STEPS: [&str; 3] = ["split", "resize", REDUCE_STEP];

/// The low bits of an input: the run's sequence number.
const SEQUENCE: u64 = 0xffff_ffff;

/// The steps of workflow `name`, in the order [`input`] numbers them.
pub(crate) fn steps(name: &str) -> &'static [&'static str] {
    match name {
        "diamond" => &DIAMOND_STEPS,
        "map" => &MAP_STEPS,
        _ => &FANOUT_STEPS,
    }
}

/// The input of run number `sequence`; with `fail_at`, the step of that index (in
/// [`steps`]) fails fatally on its first attempt. A resumed run runs that step again as a
/// later attempt, which succeeds.
pub(crate) fn input(sequence: u32, fail_at: Option<usize>) -> u64 {
    let fail = fail_at.map_or(0, |index| index as u64 + 1);
    (fail << 32) | u64::from(sequence)
}

/// Whether input `n` makes step `step` of workflow `workflow` fail fatally (on attempt 1).
fn fails_at(n: u64, workflow: &str, step: &str) -> bool {
    let fail = n >> 32;
    fail > 0 && steps(workflow).get(fail as usize - 1) == Some(&step)
}

async fn work(n: u64, ctx: &StepContext) -> Result<u64, StepError> {
    let sequence = n & SEQUENCE;
    tokio::time::sleep(Duration::from_millis(2 + sequence % 9)).await;
    if ctx.attempt == 1 && fails_at(n, ctx.workflow.as_str(), ctx.step.as_str()) {
        return Err(StepError::fatal("failing for good on purpose"));
    }
    // Every 20th run fails its first attempt of each step, to keep retries in flight.
    if sequence.is_multiple_of(20) && ctx.attempt == 1 {
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

async fn split(n: u64, ctx: StepContext) -> Result<Vec<u64>, StepError> {
    let n = work(n, &ctx).await?;
    Ok(vec![n; MAP_WIDTH])
}

/// The reduce: every element's result, once each. A short or long list fails the run, so
/// that the harness reports it.
async fn collect(results: Vec<u64>, ctx: StepContext) -> Result<u64, StepError> {
    if results.len() != MAP_WIDTH {
        return Err(StepError::fatal(format!(
            "the map collected {} results, not {MAP_WIDTH}",
            results.len()
        )));
    }
    work(results[0], &ctx).await
}

/// The chaos workflow named `name`: `fanout`, `diamond` or `map`.
pub(crate) fn build(name: &str) -> Result<Workflow, inqubo::WorkflowError> {
    let retry = || RetryPolicy::limited(5, Duration::from_millis(200));
    if name == "map" {
        return Workflow::builder("map")
            .start(Step::new("split", split).retry(retry()))
            .map(Step::new("resize", enrich).retry(retry()))
            .reduce(Step::new(REDUCE_STEP, collect).retry(retry()))
            .build();
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_input_names_the_step_that_fails() {
        let plain = input(40, None);
        assert_eq!(plain, 40);
        assert!(!steps("fanout").iter().any(|s| fails_at(plain, "fanout", s)));
        let n = input(41, Some(2));
        assert_eq!(n & SEQUENCE, 41);
        assert!(fails_at(n, "fanout", "store"));
        assert!(!fails_at(n, "fanout", "enrich"));
        assert!(fails_at(input(7, Some(3)), "diamond", JOIN_STEP));
    }

    #[test]
    fn every_step_of_both_workflows_is_numbered() {
        for name in ["fanout", "diamond", "map"] {
            let flow = build(name).unwrap();
            let mut built: Vec<&str> = flow.steps().iter().map(|s| s.name().as_str()).collect();
            let mut numbered = steps(name).to_vec();
            built.sort_unstable();
            numbered.sort_unstable();
            assert_eq!(built, numbered);
        }
    }
}
