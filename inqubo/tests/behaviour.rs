//! One set of behavioural scenarios, run on two backends: the in-process test harness and the
//! RabbitMQ runtime. Both drive the same engine (`inqubo::engine`); these scenarios check that
//! the two drivers deliver, route and publish alike. If they ever disagree, one of these fails.

use std::time::Duration;

use futures_util::StreamExt;
use inqubo::{
    EventKind, FailedBody, FailureReason, LifecycleEvent, RetryPolicy, RunId, RunOutcome, Step,
    StepContext, StepError, Workflow,
    engine::Limits,
    protocol::{Headers, RoutingKey, header},
};
use inqubo_core::testing::{TestRunner, fail_first, fatal_first, hang_first, panic_first};
use inqubo_testkit::TestBroker;
use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString},
};
use serde_json::{Value, json};

/// What a scenario sets up: the workflow, the trigger, and the conditions it runs under.
struct Scenario {
    workflow: Workflow,
    input: Vec<u8>,
    /// Headers set on the trigger over Inqubo's own.
    trigger_headers: Vec<(&'static str, u32)>,
    limits: Limits,
    /// A step whose queue is cut off from the key it takes its input from.
    unbind: Option<&'static str>,
    /// Cancel the run when this event (a short name, `b.started`) is published.
    cancel_on: Option<&'static str>,
    /// Resume the run this many times when it fails.
    resumes: u32,
    /// After the run's end, wait for this event too (one that follows the end)...
    then_wait_for: Option<&'static str>,
    /// ... this many times.
    then_wait_times: usize,
}

impl Scenario {
    fn new(workflow: Workflow, input: &[u8]) -> Self {
        Self {
            workflow,
            input: input.to_vec(),
            trigger_headers: Vec::new(),
            limits: Limits::default(),
            unbind: None,
            cancel_on: None,
            resumes: 0,
            then_wait_for: None,
            then_wait_times: 1,
        }
    }
}

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

    fn failure(&self) -> inqubo::RunFailedBody {
        match &self.outcome {
            RunOutcome::Failed(failure) => failure.clone(),
            other => panic!("expected a failed run, got {other:?}"),
        }
    }

    fn failed_event_of(&self, step: &str) -> FailedBody {
        let event = self
            .events
            .iter()
            .find(|e| {
                e.kind == EventKind::Failed && e.step.as_ref().is_some_and(|s| s.as_str() == step)
            })
            .unwrap_or_else(|| panic!("no failed event of {step}: {:#?}", self.events));
        serde_json::from_value(event.body.clone()).unwrap()
    }
}

/// Runs a scenario once on a backend.
trait Backend {
    async fn run(&self, scenario: Scenario) -> Observed;
}

struct Harness;

impl Backend for Harness {
    async fn run(&self, scenario: Scenario) -> Observed {
        let mut runner = TestRunner::new(scenario.workflow)
            .limits(scenario.limits)
            .resume_failed(scenario.resumes);
        if let Some(step) = scenario.unbind {
            runner = runner.unbind(step);
        }
        if let Some(event) = scenario.cancel_on {
            runner = runner.cancel_on(event);
        }
        let mut extra = Headers::new();
        for (name, value) in scenario.trigger_headers {
            extra.insert(name, value);
        }
        let report = runner
            .run_with_headers("run-1", scenario.input, extra)
            .await;
        let generations = report
            .events
            .iter()
            .map(|e| e.generation)
            .max()
            .unwrap_or(1);
        assert_eq!(
            report.terminal_events(),
            generations as usize,
            "one terminal event per generation: {:#?}",
            report.events
        );
        Observed {
            outcome: report.outcome.expect("the run ended"),
            events: report.events,
        }
    }
}

struct RabbitMq;

impl RabbitMq {
    /// Every event of `workflow` in one ordered stream — but `succeeded` events only when
    /// `with_succeeded`, since a binding to them makes every step outcome routable.
    async fn observe(
        client: &inqubo::Client,
        workflow: &Workflow,
        with_succeeded: bool,
    ) -> inqubo::EventStream {
        let name = workflow.name();
        let mut keys = vec![RoutingKey::run_events(name)];
        for step in workflow.steps() {
            for kind in [
                EventKind::Started,
                EventKind::Retrying,
                EventKind::Failed,
                EventKind::Skipped,
            ] {
                keys.push(RoutingKey::step_event(name, step.name(), kind));
            }
            if with_succeeded {
                keys.push(RoutingKey::step_event(
                    name,
                    step.name(),
                    EventKind::Succeeded,
                ));
            }
        }
        client
            .subscribe_to_all(keys.iter().map(RoutingKey::as_str))
            .await
            .unwrap()
    }
}

impl Backend for RabbitMq {
    async fn run(&self, scenario: Scenario) -> Observed {
        let broker = TestBroker::new();
        let workflow = scenario.workflow;
        let runner = broker
            .runner(&workflow)
            .limits(scenario.limits)
            .connect()
            .await
            .unwrap();
        if let Some(step) = scenario.unbind {
            let node = workflow.step(step).unwrap();
            let topology = broker.topology();
            let (connection, channel) = broker.raw_channel().await;
            for parent in node.parents() {
                let key = RoutingKey::step_input(workflow.name(), Some(parent));
                channel
                    .queue_unbind(
                        topology
                            .step_queue(workflow.name(), node.name())
                            .as_str()
                            .into(),
                        topology.exchange().into(),
                        key.as_str().into(),
                        FieldTable::default(),
                    )
                    .await
                    .unwrap();
            }
            let _ = connection.close(200, "done".into()).await;
        }
        let client = runner.client().clone();
        let mut stream = Self::observe(&client, &workflow, scenario.unbind.is_none()).await;
        let mut headers = FieldTable::default();
        headers.insert(
            header::RUN_ID.into(),
            AMQPValue::LongString(LongString::from("run-1")),
        );
        for (name, value) in scenario.trigger_headers {
            headers.insert(name.into(), AMQPValue::LongLongInt(value.into()));
        }
        broker
            .publish_raw(
                RoutingKey::run_triggered(workflow.name()).as_str(),
                BasicProperties::default().with_headers(headers),
                &scenario.input,
            )
            .await;
        let run = RunId::new("run-1").unwrap();
        let mut events = Vec::new();
        let mut resumes = scenario.resumes;
        let mut waiting_for = scenario.then_wait_for;
        let mut wait_times = scenario.then_wait_times;
        let mut outcome = None;
        let finished = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(event) = stream.next().await {
                let event = event.unwrap();
                let name = event.short_name();
                let ended = RunOutcome::from_event(&event);
                events.push(event);
                if Some(name.as_str()) == scenario.cancel_on {
                    client
                        .cancel(
                            workflow.name(),
                            &run,
                            "cancelled by the test",
                            Duration::from_secs(20),
                        )
                        .await
                        .unwrap();
                }
                if waiting_for == Some(name.as_str()) {
                    wait_times = wait_times.saturating_sub(1);
                    if wait_times == 0 {
                        waiting_for = None;
                    }
                }
                if let Some(ended) = ended {
                    if matches!(ended, RunOutcome::Failed(_)) && resumes > 0 {
                        resumes -= 1;
                        client.resume(workflow.name(), &run).await.unwrap();
                        continue;
                    }
                    outcome = Some(ended);
                }
                if outcome.is_some() && waiting_for.is_none() {
                    return;
                }
            }
            panic!("event stream ended")
        })
        .await;
        if finished.is_err() {
            panic!("run did not end; events: {events:#?}");
        }
        let outcome = outcome.unwrap();
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
    let seen = backend.run(Scenario::new(flow, b"20")).await;
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
    let seen = backend.run(Scenario::new(flow, b"4")).await;
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
    let seen = backend.run(Scenario::new(flow, b"1")).await;
    let failure = seen.failure();
    assert_eq!(failure.attempt, 2);
    assert_eq!(failure.reason, inqubo::FailureReason::RetriesExhausted);
    assert_eq!(seen.trail_of("double").last().unwrap(), "double.failed");
}

async fn fatal_errors_skip_retries(backend: impl Backend) {
    let flow = Workflow::builder("fatal")
        .start(Step::new("double", fatal_first(1, double)).retry(quick_retries()))
        .build()
        .unwrap();
    let seen = backend.run(Scenario::new(flow, b"1")).await;
    let failure = seen.failure();
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
    let seen = backend.run(Scenario::new(flow, b"5")).await;
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
    let seen = backend.run(Scenario::new(diamond(false), b"3")).await;
    assert_eq!(seen.outcome, RunOutcome::Succeeded(json!({"d": "7/n=6"})));
    assert_eq!(seen.trail_of("d"), ["d.started", "d.succeeded"]);
}

async fn a_failed_branch_fails_the_run_without_the_join(backend: impl Backend) {
    let seen = backend.run(Scenario::new(diamond(true), b"3")).await;
    let failure = seen.failure();
    assert_eq!(failure.step.as_str(), "c");
    assert!(seen.trail_of("d").is_empty());
}

async fn undecodable_input_is_parked_and_fails_the_run(backend: impl Backend) {
    let flow = Workflow::builder("strict")
        .start(Step::new("double", double))
        .build()
        .unwrap();
    let seen = backend
        .run(Scenario::new(flow, br#"{"not": "a number"}"#))
        .await;
    let failure = seen.failure();
    assert_eq!(failure.reason, inqubo::FailureReason::Undecodable);
    assert_eq!(seen.trail_of("double"), ["double.started", "double.failed"]);
}

async fn too_large_input_is_parked_without_running(backend: impl Backend) {
    let flow = Workflow::builder("big")
        .start(Step::new("double", double))
        .build()
        .unwrap();
    let mut scenario = Scenario::new(flow, b"123456789012");
    scenario.limits.max_input_bytes = 8;
    let seen = backend.run(scenario).await;
    let failure = seen.failure();
    assert_eq!(failure.reason, FailureReason::TooLarge);
    assert_eq!(seen.trail_of("double"), ["double.failed"], "never started");
    assert_eq!(
        seen.failed_event_of("double").error,
        "input is 12 bytes, more than the 8 accepted"
    );
}

async fn inputs_past_the_redelivery_limit_are_parked(backend: impl Backend) {
    let flow = Workflow::builder("crashy")
        .start(Step::new("double", double))
        .build()
        .unwrap();
    let mut scenario = Scenario::new(flow, b"1");
    scenario.trigger_headers.push((header::REDELIVERY_COUNT, 9));
    let seen = backend.run(scenario).await;
    assert_eq!(seen.failure().reason, FailureReason::RedeliveryLimit);
    assert_eq!(seen.trail_of("double"), ["double.failed"]);
}

async fn an_unroutable_outcome_fails_the_step_once(backend: impl Backend) {
    let flow = Workflow::builder("orphan")
        .start(Step::new("double", double))
        .then(Step::new("plus_one", plus_one))
        .build()
        .unwrap();
    let mut scenario = Scenario::new(flow, b"1");
    scenario.unbind = Some("plus_one");
    let seen = backend.run(scenario).await;
    let failure = seen.failure();
    assert_eq!(failure.reason, FailureReason::Unroutable);
    assert_eq!(failure.step.as_str(), "double");
    assert!(
        failure.error.contains("orphan.step.double.succeeded"),
        "{failure:?}"
    );
    // Observers of this scenario are not bound to `succeeded` (that would make it routable).
    let trail: Vec<String> = seen
        .trail_of("double")
        .into_iter()
        .filter(|e| e != "double.succeeded")
        .collect();
    assert_eq!(trail, ["double.started", "double.failed"]);
    assert!(seen.trail_of("plus_one").is_empty());
}

async fn a_retried_branch_still_joins(backend: impl Backend) {
    let flow = Workflow::builder("rejoin")
        .start(Step::new("a", double))
        .then((
            Step::new("b", plus_one),
            Step::new("c", fail_first(1, describe)).retry(quick_retries()),
        ))
        .then(Step::new("d", combine))
        .build()
        .unwrap();
    let seen = backend.run(Scenario::new(flow, b"3")).await;
    assert_eq!(seen.outcome, RunOutcome::Succeeded(json!({"d": "7/n=6"})));
    assert_eq!(
        seen.trail_of("c"),
        ["c.started", "c.retrying", "c.started", "c.succeeded"]
    );
    assert_eq!(seen.trail_of("d"), ["d.started", "d.succeeded"]);
}

async fn a_fan_out_ends_with_every_last_output(backend: impl Backend) {
    let flow = Workflow::builder("fanout")
        .start(Step::new("a", double))
        .then((Step::new("b", plus_one), Step::new("c", describe)))
        .build()
        .unwrap();
    let seen = backend.run(Scenario::new(flow, b"5")).await;
    assert_eq!(
        seen.outcome,
        RunOutcome::Succeeded(json!({"b": 11, "c": "n=10"}))
    );
    assert_eq!(seen.trail_of("run"), ["run.triggered", "run.succeeded"]);
}

async fn a_failed_join_step_fails_the_run(backend: impl Backend) {
    let flow = Workflow::builder("badjoin")
        .start(Step::new("a", double))
        .then((Step::new("b", plus_one), Step::new("c", describe)))
        .then(Step::new("d", fatal_first(1, combine)))
        .build()
        .unwrap();
    let seen = backend.run(Scenario::new(flow, b"1")).await;
    let failure = seen.failure();
    assert_eq!(failure.step.as_str(), "d");
    assert_eq!(failure.reason, FailureReason::Fatal);
    assert_eq!(failure.error, "injected fatal failure of attempt 1");
}

async fn without_retries_the_first_error_is_final(backend: impl Backend) {
    let flow = Workflow::builder("once")
        .start(Step::new("double", fail_first(1, double)).retry(RetryPolicy::none()))
        .build()
        .unwrap();
    let seen = backend.run(Scenario::new(flow, b"1")).await;
    let failure = seen.failure();
    assert_eq!(failure.reason, FailureReason::RetriesExhausted);
    assert_eq!(failure.attempt, 1);
    assert_eq!(seen.trail_of("double"), ["double.started", "double.failed"]);
}

async fn a_failed_branch_resumed_joins_its_sibling_and_the_run_succeeds(backend: impl Backend) {
    let mut scenario = Scenario::new(diamond(true), b"3");
    scenario.resumes = 1;
    let seen = backend.run(scenario).await;
    assert_eq!(seen.outcome, RunOutcome::Succeeded(json!({"d": "7/n=6"})));
    assert_eq!(
        seen.trail_of("run"),
        [
            "run.triggered",
            "run.failed",
            "run.resumed",
            "run.succeeded"
        ]
    );
    assert_eq!(
        seen.trail_of("c"),
        ["c.started", "c.failed", "c.started", "c.succeeded"]
    );
    let attempts: Vec<Option<u32>> = seen
        .events
        .iter()
        .filter(|e| e.step.as_ref().is_some_and(|s| s.as_str() == "c"))
        .map(|e| e.attempt)
        .collect();
    assert_eq!(
        attempts,
        [Some(1), Some(1), Some(2), Some(2)],
        "attempt numbers continue"
    );
    let ends: Vec<u32> = seen
        .events
        .iter()
        .filter(|e| e.kind.ends_run())
        .map(|e| e.generation)
        .collect();
    assert_eq!(ends, [1, 2], "one terminal event per generation");
    assert_eq!(
        seen.trail_of("b"),
        ["b.started", "b.succeeded"],
        "b ran once"
    );
}

async fn a_failed_chain_resumes_from_its_failed_step(backend: impl Backend) {
    let flow = Workflow::builder("rechain")
        .start(Step::new("double", double))
        .then(Step::new("plus_one", fatal_first(1, plus_one)))
        .build()
        .unwrap();
    let mut scenario = Scenario::new(flow, b"4");
    scenario.resumes = 1;
    let seen = backend.run(scenario).await;
    assert_eq!(seen.outcome, RunOutcome::Succeeded(json!({"plus_one": 9})));
    assert_eq!(
        seen.trail_of("double"),
        ["double.started", "double.succeeded"]
    );
    assert_eq!(
        seen.trail_of("run"),
        [
            "run.triggered",
            "run.failed",
            "run.resumed",
            "run.succeeded"
        ]
    );
}

async fn waits_for_its_cancellation(n: u64, ctx: StepContext) -> Result<u64, StepError> {
    // Returns as soon as the run is cancelled (or after a while, where nothing tells it).
    let _ = tokio::time::timeout(Duration::from_secs(10), ctx.cancelled()).await;
    Ok(n)
}

async fn a_cancelled_run_takes_no_new_step(backend: impl Backend) {
    let flow = Workflow::builder("cancelme")
        .start(Step::new("wait", waits_for_its_cancellation))
        .then(Step::new("double", double))
        .build()
        .unwrap();
    let mut scenario = Scenario::new(flow, b"1");
    scenario.cancel_on = Some("wait.started");
    scenario.then_wait_for = Some("double.skipped");
    let seen = backend.run(scenario).await;
    let RunOutcome::Cancelled(cancelled) = &seen.outcome else {
        panic!("expected a cancelled run, got {:?}", seen.outcome);
    };
    assert_eq!(cancelled.reason, "cancelled by the test");
    assert_eq!(seen.trail_of("double"), ["double.skipped"]);
    assert_eq!(seen.trail_of("run"), ["run.triggered", "run.cancelled"]);
}

async fn a_failure_stops_a_sibling_that_is_retrying(backend: impl Backend) {
    let flow = Workflow::builder("failfast")
        .start(Step::new("a", double))
        .then((
            Step::new("b", fatal_first(1, plus_one)),
            Step::new("c", fail_first(9, describe))
                .retry(RetryPolicy::limited(9, Duration::from_millis(500))),
        ))
        .build()
        .unwrap();
    let mut scenario = Scenario::new(flow, b"1");
    scenario.then_wait_for = Some("c.skipped");
    let seen = backend.run(scenario).await;
    assert_eq!(seen.failure().step.as_str(), "b");
    let c = seen.trail_of("c");
    assert_eq!(c.last().map(String::as_str), Some("c.skipped"), "{c:?}");
    assert!(c.len() < 9 * 2, "c stopped retrying: {c:?}");
}

// Maps: a step run once per element of its parent's list, and the step that collects them.

async fn list(n: u64, _: StepContext) -> Result<Vec<u64>, StepError> {
    Ok((0..n).collect())
}

/// Squares its element; later elements finish first, so results arrive out of order.
async fn square(x: u64, ctx: StepContext) -> Result<u64, StepError> {
    assert_eq!(
        ctx.element(),
        Some(u32::try_from(x).unwrap()),
        "element index"
    );
    tokio::time::sleep(Duration::from_millis(20u64.saturating_sub(x * 2))).await;
    Ok(x * x)
}

/// Fails element 3 for good on its first attempt.
async fn square_but_three_fails_once(x: u64, ctx: StepContext) -> Result<u64, StepError> {
    if ctx.element() == Some(3) && ctx.attempt == 1 {
        return Err(StepError::fatal("three is unlucky"));
    }
    Ok(x * x)
}

async fn collect(results: Vec<u64>, _: StepContext) -> Result<Vec<u64>, StepError> {
    Ok(results)
}

fn squares(element: Step<u64, u64>) -> Workflow {
    Workflow::builder("squares")
        .start(Step::new("list", list))
        .map(element)
        .reduce(Step::new("collect", collect))
        .build()
        .unwrap()
}

fn elements_of(seen: &Observed, step: &str, kind: EventKind) -> Vec<u32> {
    let mut elements: Vec<u32> = seen
        .events
        .iter()
        .filter(|e| e.kind == kind && e.step.as_ref().is_some_and(|s| s.as_str() == step))
        .map(|e| e.element_index().expect("a map event carries its element"))
        .collect();
    elements.sort_unstable();
    elements
}

async fn a_map_runs_each_element_once_and_reduces_in_order(backend: impl Backend) {
    let seen = backend
        .run(Scenario::new(squares(Step::new("square", square)), b"10"))
        .await;
    let expected: Vec<u64> = (0..10).map(|x| x * x).collect();
    assert_eq!(
        seen.outcome,
        RunOutcome::Succeeded(json!({ "collect": expected }))
    );
    let all: Vec<u32> = (0..10).collect();
    assert_eq!(elements_of(&seen, "square", EventKind::Succeeded), all);
    assert_eq!(elements_of(&seen, "square", EventKind::Started), all);
    assert_eq!(
        seen.trail_of("collect"),
        ["collect.started", "collect.succeeded"]
    );
}

async fn an_empty_map_reaches_the_reduce_with_an_empty_list(backend: impl Backend) {
    let seen = backend
        .run(Scenario::new(squares(Step::new("square", square)), b"0"))
        .await;
    assert_eq!(
        seen.outcome,
        RunOutcome::Succeeded(json!({ "collect": [] }))
    );
    assert_eq!(seen.trail_of("square"), Vec::<String>::new());
    assert_eq!(
        seen.trail_of("collect"),
        ["collect.started", "collect.succeeded"]
    );
}

async fn a_map_of_one_element(backend: impl Backend) {
    let seen = backend
        .run(Scenario::new(squares(Step::new("square", square)), b"1"))
        .await;
    assert_eq!(
        seen.outcome,
        RunOutcome::Succeeded(json!({ "collect": [0] }))
    );
    assert_eq!(elements_of(&seen, "square", EventKind::Succeeded), [0]);
}

async fn a_map_of_ten_thousand_elements(backend: impl Backend) {
    async fn inc(x: u64, _: StepContext) -> Result<u64, StepError> {
        Ok(x + 1)
    }
    let seen = backend
        .run(Scenario::new(squares(Step::new("square", inc)), b"10000"))
        .await;
    let expected: Vec<u64> = (1..=10_000).collect();
    assert_eq!(
        seen.outcome,
        RunOutcome::Succeeded(json!({ "collect": expected }))
    );
    assert_eq!(
        elements_of(&seen, "square", EventKind::Succeeded).len(),
        10_000
    );
}

async fn a_map_as_last_step_ends_the_run_with_every_result(backend: impl Backend) {
    let flow = Workflow::builder("leafmap")
        .start(Step::new("list", list))
        .map(Step::new("square", square))
        .build()
        .unwrap();
    let seen = backend.run(Scenario::new(flow, b"4")).await;
    assert_eq!(
        seen.outcome,
        RunOutcome::Succeeded(json!({ "square": [0, 1, 4, 9] }))
    );
}

async fn a_failed_element_fails_the_run_once(backend: impl Backend) {
    let mut scenario = Scenario::new(
        squares(Step::new("square", square_but_three_fails_once)),
        b"6",
    );
    scenario.workflow = Workflow::builder("squares")
        .fail_fast(false)
        .start(Step::new("list", list))
        .map(Step::new("square", square_but_three_fails_once))
        .reduce(Step::new("collect", collect))
        .build()
        .unwrap();
    let seen = backend.run(scenario).await;
    let failure = seen.failure();
    assert_eq!(failure.step.as_str(), "square");
    assert_eq!(failure.reason, FailureReason::Fatal);
    assert_eq!(elements_of(&seen, "square", EventKind::Failed), [3]);
    assert_eq!(seen.trail_of("collect"), Vec::<String>::new());
    assert_eq!(seen.trail_of("run"), ["run.triggered", "run.failed"]);
}

async fn a_settled_map_collects_a_failed_element_as_an_error(backend: impl Backend) {
    async fn oks(
        results: Vec<Result<u64, FailedBody>>,
        _: StepContext,
    ) -> Result<Vec<Option<u64>>, StepError> {
        if let Some(Err(failure)) = results.get(3) {
            assert_eq!(failure.error, "three is unlucky");
            assert_eq!(failure.reason, FailureReason::Fatal);
        }
        Ok(results.into_iter().map(Result::ok).collect())
    }
    let flow = Workflow::builder("settled")
        .start(Step::new("list", list))
        .map_settled(Step::new("square", square_but_three_fails_once))
        .reduce(Step::new("oks", oks))
        .build()
        .unwrap();
    let seen = backend.run(Scenario::new(flow, b"6")).await;
    assert_eq!(
        seen.outcome,
        RunOutcome::Succeeded(json!({ "oks": [0, 1, 4, null, 16, 25] }))
    );
    assert_eq!(elements_of(&seen, "square", EventKind::Failed), [3]);
    assert_eq!(seen.trail_of("run"), ["run.triggered", "run.succeeded"]);
}

async fn a_resumed_failed_element_completes_the_map(backend: impl Backend) {
    let mut scenario = Scenario::new(
        squares(Step::new("square", square_but_three_fails_once)),
        b"6",
    );
    scenario.resumes = 1;
    let seen = backend.run(scenario).await;
    assert_eq!(
        seen.outcome,
        RunOutcome::Succeeded(json!({ "collect": [0, 1, 4, 9, 16, 25] }))
    );
    assert_eq!(
        seen.trail_of("run"),
        [
            "run.triggered",
            "run.failed",
            "run.resumed",
            "run.succeeded"
        ]
    );
    let three: Vec<String> = seen
        .events
        .iter()
        .filter(|e| e.element_index() == Some(3))
        .map(LifecycleEvent::short_name)
        .collect();
    assert_eq!(
        three,
        [
            "square.started",
            "square.failed",
            "square.started",
            "square.succeeded"
        ]
    );
    assert_eq!(
        seen.trail_of("list"),
        ["list.started", "list.succeeded"],
        "list ran once"
    );
}

async fn a_cancelled_map_takes_no_new_element(backend: impl Backend) {
    let flow = Workflow::builder("cancelmap")
        .start(Step::new("list", list))
        .map(Step::new("wait", waits_for_its_cancellation).concurrency(1))
        .reduce(Step::new("sum", |v: Vec<u64>, _: StepContext| async move {
            Ok::<u64, StepError>(v.iter().sum())
        }))
        .build()
        .unwrap();
    let mut scenario = Scenario::new(flow, b"5");
    scenario.cancel_on = Some("wait.started");
    // One runner, one element at a time: the first waits for the cancel, the other four are
    // skipped (the harness, which cancels later, runs them all).
    scenario.then_wait_for = Some("wait.skipped");
    scenario.then_wait_times = 4;
    let seen = backend.run(scenario).await;
    assert!(
        matches!(seen.outcome, RunOutcome::Cancelled(_)),
        "{:?}",
        seen.outcome
    );
    // Each element either ran before the cancel reached it or was skipped, never both.
    let mut settled = elements_of(&seen, "wait", EventKind::Started);
    settled.extend(elements_of(&seen, "wait", EventKind::Skipped));
    settled.sort_unstable();
    assert_eq!(settled, [0, 1, 2, 3, 4], "{:#?}", seen.events);
    assert!(
        !seen.trail_of("sum").contains(&"sum.started".to_owned()),
        "the reduce of a cancelled run never starts"
    );
    assert_eq!(seen.trail_of("run"), ["run.triggered", "run.cancelled"]);
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
    too_large_input_is_parked_without_running,
    inputs_past_the_redelivery_limit_are_parked,
    an_unroutable_outcome_fails_the_step_once,
    a_retried_branch_still_joins,
    a_fan_out_ends_with_every_last_output,
    a_failed_join_step_fails_the_run,
    without_retries_the_first_error_is_final,
    a_failed_branch_resumed_joins_its_sibling_and_the_run_succeeds,
    a_failed_chain_resumes_from_its_failed_step,
    a_cancelled_run_takes_no_new_step,
    a_failure_stops_a_sibling_that_is_retrying,
    a_map_runs_each_element_once_and_reduces_in_order,
    an_empty_map_reaches_the_reduce_with_an_empty_list,
    a_map_of_one_element,
    a_map_of_ten_thousand_elements,
    a_map_as_last_step_ends_the_run_with_every_result,
    a_failed_element_fails_the_run_once,
    a_resumed_failed_element_completes_the_map,
    a_settled_map_collects_a_failed_element_as_an_error,
    a_cancelled_map_takes_no_new_element,
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
    assert_eq!(
        report.outcome,
        Some(RunOutcome::Succeeded(json!({"double": 4})))
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "virtual time, not wall time"
    );
    assert_eq!(report.parked.len(), 0);
}
