//! One set of behavioural scenarios, run on two backends: the in-process test harness and the
//! RabbitMQ runtime. Both drive the same engine (`inqubo::engine`); these scenarios check that
//! the two drivers deliver, route and publish alike. If they ever disagree, one of these fails.

use std::time::Duration;

use futures_util::StreamExt;
use inqubo::{
    EventKind, FailedBody, FailureReason, LifecycleEvent, RetryPolicy, RunOutcome, Step,
    StepContext, StepError, Workflow,
    engine::Limits,
    protocol::{Headers, RoutingKey, header},
};
use inqubo_core::testing::{TestRunner, fail_first, fatal_first, hang_first, panic_first};
use inqubo_testkit::TestBroker;
use lapin::{
    BasicProperties,
    options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
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
}

impl Scenario {
    fn new(workflow: Workflow, input: &[u8]) -> Self {
        Self {
            workflow,
            input: input.to_vec(),
            trigger_headers: Vec::new(),
            limits: Limits::default(),
            unbind: None,
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
        let mut runner = TestRunner::new(scenario.workflow).limits(scenario.limits);
        if let Some(step) = scenario.unbind {
            runner = runner.unbind(step);
        }
        let mut extra = Headers::new();
        for (name, value) in scenario.trigger_headers {
            extra.insert(name, value);
        }
        let report = runner
            .run_with_headers("run-1", scenario.input, extra)
            .await;
        assert_eq!(report.terminal_events(), 1, "{:#?}", report.events);
        Observed {
            outcome: report.outcome.expect("the run ended"),
            events: report.events,
        }
    }
}

struct RabbitMq;

impl RabbitMq {
    /// A queue of the test's own bound to every event of `workflow` — but to `succeeded`
    /// events only when `with_succeeded`, since a binding to them makes every step outcome
    /// routable.
    async fn observe(
        broker: &TestBroker,
        workflow: &Workflow,
        with_succeeded: bool,
    ) -> lapin::Consumer {
        let (connection, channel) = broker.raw_channel().await;
        std::mem::forget(connection); // kept open for the consumer; closed when the test ends
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let name = workflow.name();
        let mut keys = vec![RoutingKey::run_events(name)];
        for step in workflow.steps() {
            for kind in [EventKind::Started, EventKind::Retrying, EventKind::Failed] {
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
        for key in keys {
            channel
                .queue_bind(
                    queue.name().as_str().into(),
                    broker.prefix().into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
        }
        channel
            .basic_consume(
                queue.name().as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
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
        let mut consumer = Self::observe(&broker, &workflow, scenario.unbind.is_none()).await;
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
        let mut events = Vec::new();
        let outcome = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(delivery) = consumer.next().await {
                let event = inqubo::protocol::event_from_delivery(&delivery.unwrap()).unwrap();
                let outcome = RunOutcome::from_event(&event);
                events.push(event);
                if let Some(outcome) = outcome {
                    return outcome;
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
