//! One set of behavioural scenarios, run on two backends: the in-process test harness and the
//! RabbitMQ runtime. If the two ever disagree on a scenario, one of these tests fails.

use std::time::Duration;

use futures_util::StreamExt;
use inqubo::{EventKind, LifecycleEvent, RetryPolicy, Step, StepContext, StepError, Workflow};
use inqubo_core::testing::{
    RunOutcome, TestRunner, fail_first, fatal_first, hang_first, panic_first,
};
use inqubo_testkit::{TestBroker, run_id};
use serde_json::{Value, json};

/// What a scenario observes of a run, on either backend.
#[derive(Debug)]
struct Observed {
    outcome: RunOutcome,
    events: Vec<LifecycleEvent>,
}

impl Observed {
    fn trail_of(&self, step: &str) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| e.step.as_ref().map_or("run", |s| s.as_str()) == step)
            .map(LifecycleEvent::short_name)
            .collect()
    }
}

/// Runs `workflow` once with `input` on a backend.
trait Backend {
    async fn run(&self, workflow: Workflow, input: Vec<u8>) -> Observed;
}

struct Harness;

impl Backend for Harness {
    async fn run(&self, workflow: Workflow, input: Vec<u8>) -> Observed {
        let report = TestRunner::new(workflow).run_json("run-1", input).await;
        Observed {
            outcome: report.outcome,
            events: report.events,
        }
    }
}

struct RabbitMq;

impl Backend for RabbitMq {
    async fn run(&self, workflow: Workflow, input: Vec<u8>) -> Observed {
        let broker = TestBroker::new();
        let runner = broker.start_runner(&workflow).await;
        let mut stream = runner
            .client()
            .subscribe(Some(workflow.name()))
            .await
            .unwrap();
        runner
            .client()
            .trigger_json(workflow.name(), run_id("run-1"), input)
            .await
            .unwrap();
        let mut events = Vec::new();
        let outcome = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(event) = stream.next().await {
                let event = event.unwrap();
                let kind = event.kind;
                let body = event.body.clone();
                events.push(event);
                match kind {
                    EventKind::RunSucceeded => return RunOutcome::Succeeded(body),
                    EventKind::RunFailed => {
                        return RunOutcome::Failed(serde_json::from_value(body).unwrap());
                    }
                    _ => {}
                }
            }
            panic!("event stream ended")
        })
        .await
        .unwrap_or_else(|_| panic!("run did not end; events: {events:#?}"));
        runner.shutdown().await.unwrap();
        Observed { outcome, events }
    }
}

async fn double(n: u64, _: StepContext) -> Result<u64, StepError> {
    Ok(n * 2)
}
async fn plus_one(n: u64, _: StepContext) -> Result<u64, StepError> {
    Ok(n + 1)
}
async fn describe(n: u64, _: StepContext) -> Result<String, StepError> {
    Ok(format!("n={n}"))
}
async fn combine((a, b): (u64, String), _: StepContext) -> Result<String, StepError> {
    Ok(format!("{a}/{b}"))
}
fn quick_retries() -> RetryPolicy {
    RetryPolicy::limited(3, Duration::from_millis(100))
}

async fn chain_succeeds(backend: impl Backend) {
    let flow = Workflow::builder("chain")
        .start(Step::new("double", double))
        .then(Step::new("plus_one", plus_one))
        .build()
        .unwrap();
    let seen = backend.run(flow, b"20".to_vec()).await;
    assert_eq!(seen.outcome, RunOutcome::Succeeded(json!({"plus_one": 41})));
    assert_eq!(
        seen.trail_of("double"),
        ["double.started", "double.succeeded"]
    );
    assert_eq!(seen.trail_of("run"), ["run.triggered", "run.succeeded"]);
}

async fn retries_then_succeeds(backend: impl Backend) {
    let flow = Workflow::builder("retry")
        .start(Step::new("double", fail_first(2, double)).retry(quick_retries()))
        .build()
        .unwrap();
    let seen = backend.run(flow, b"4".to_vec()).await;
    assert_eq!(seen.outcome, RunOutcome::Succeeded(json!({"double": 8})));
    assert_eq!(
        seen.trail_of("double"),
        [
            "double.started",
            "double.retrying",
            "double.started",
            "double.retrying",
            "double.started",
            "double.succeeded"
        ]
    );
    let retry = seen
        .events
        .iter()
        .find(|e| e.kind == EventKind::Retrying)
        .unwrap();
    assert_eq!(
        retry.body,
        json!({"error": "injected failure of attempt 1", "attempt": 1, "next_attempt": 2, "delay_ms": 100})
    );
}

async fn exhausted_retries_fail_the_run(backend: impl Backend) {
    let flow = Workflow::builder("exhaust")
        .start(
            Step::new("double", fail_first(9, double))
                .retry(RetryPolicy::limited(1, Duration::from_millis(50))),
        )
        .build()
        .unwrap();
    let seen = backend.run(flow, b"1".to_vec()).await;
    let RunOutcome::Failed(failure) = seen.outcome.clone() else {
        panic!("expected failure");
    };
    assert_eq!(failure.attempt, 2);
    assert_eq!(failure.reason, inqubo::FailureReason::RetriesExhausted);
    assert_eq!(seen.trail_of("double").last().unwrap(), "double.failed");
}

async fn fatal_errors_skip_retries(backend: impl Backend) {
    let flow = Workflow::builder("fatal")
        .start(Step::new("double", fatal_first(1, double)).retry(quick_retries()))
        .build()
        .unwrap();
    let seen = backend.run(flow, b"1".to_vec()).await;
    let RunOutcome::Failed(failure) = seen.outcome.clone() else {
        panic!("expected failure");
    };
    assert_eq!(failure.reason, inqubo::FailureReason::Fatal);
    assert_eq!(seen.trail_of("double"), ["double.started", "double.failed"]);
}

async fn panics_and_timeouts_are_retried(backend: impl Backend) {
    let flow = Workflow::builder("faults")
        .start(Step::new("double", panic_first(1, double)).retry(quick_retries()))
        .then(
            Step::new("plus_one", hang_first(1, plus_one))
                .retry(quick_retries())
                .timeout(Duration::from_millis(300)),
        )
        .build()
        .unwrap();
    let seen = backend.run(flow, b"5".to_vec()).await;
    assert_eq!(seen.outcome, RunOutcome::Succeeded(json!({"plus_one": 11})));
    let errors: Vec<&Value> = seen
        .events
        .iter()
        .filter(|e| e.kind == EventKind::Retrying)
        .map(|e| &e.body["error"])
        .collect();
    assert_eq!(
        errors,
        [
            &json!("step panicked: injected panic in attempt 1"),
            &json!("step timed out after 300ms")
        ]
    );
}

fn diamond(c_fails: bool) -> Workflow {
    let c = if c_fails {
        Step::new("c", fatal_first(1, describe))
    } else {
        Step::new("c", describe)
    };
    Workflow::builder("diamond")
        .start(Step::new("a", double))
        .then((Step::new("b", plus_one), c))
        .then(Step::new("d", combine))
        .build()
        .unwrap()
}

async fn joins_fire_once_with_both_outputs(backend: impl Backend) {
    let seen = backend.run(diamond(false), b"3".to_vec()).await;
    assert_eq!(seen.outcome, RunOutcome::Succeeded(json!({"d": "7/n=6"})));
    assert_eq!(seen.trail_of("d"), ["d.started", "d.succeeded"]);
}

async fn a_failed_branch_fails_the_run_without_the_join(backend: impl Backend) {
    let seen = backend.run(diamond(true), b"3".to_vec()).await;
    let RunOutcome::Failed(failure) = seen.outcome.clone() else {
        panic!("expected failure");
    };
    assert_eq!(failure.step.as_str(), "c");
    assert!(seen.trail_of("d").is_empty());
}

async fn undecodable_input_is_parked_and_fails_the_run(backend: impl Backend) {
    let flow = Workflow::builder("strict")
        .start(Step::new("double", double))
        .build()
        .unwrap();
    let seen = backend.run(flow, br#"{"not": "a number"}"#.to_vec()).await;
    let RunOutcome::Failed(failure) = seen.outcome.clone() else {
        panic!("expected failure");
    };
    assert_eq!(failure.reason, inqubo::FailureReason::Undecodable);
    assert_eq!(seen.trail_of("double"), ["double.started", "double.failed"]);
}

macro_rules! on_both_backends {
    ($($scenario:ident),+ $(,)?) => {
        mod harness {
            $(
                #[tokio::test(start_paused = true)]
                async fn $scenario() {
                    super::$scenario(super::Harness).await;
                }
            )+
        }
        mod rabbitmq {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(super::RabbitMq).await;
                }
            )+
        }
    };
}

on_both_backends!(
    chain_succeeds,
    retries_then_succeeds,
    exhausted_retries_fail_the_run,
    fatal_errors_skip_retries,
    panics_and_timeouts_are_retried,
    joins_fire_once_with_both_outputs,
    a_failed_branch_fails_the_run_without_the_join,
    undecodable_input_is_parked_and_fails_the_run,
);

#[tokio::test(start_paused = true)]
async fn hour_long_retries_take_no_time_under_a_paused_clock() {
    let flow = Workflow::builder("slow")
        .start(
            Step::new("double", fail_first(3, double))
                .retry(RetryPolicy::limited(5, Duration::from_secs(3600))),
        )
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let report = TestRunner::new(flow).run("r", &2).await;
    assert_eq!(report.outcome, RunOutcome::Succeeded(json!({"double": 4})));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "virtual time, not wall time"
    );
    assert_eq!(report.parked.len(), 0);
}
