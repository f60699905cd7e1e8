//! The engine's rules, checked with plain values: no broker, no clock, no runtime.

use std::time::Duration;

mod refusals;
mod runs;

use super::*;
use crate::{
    AttemptOutcome, FailureReason, RetryPolicy, RunId, Step, StepContext, StepError,
    join::JoinBook,
    protocol::{Destination, Headers, Incoming, RoutingKey, header},
};

async fn id(n: u32, _: StepContext) -> Result<u32, StepError> {
    Ok(n)
}
async fn pair((a, b): (u32, u32), _: StepContext) -> Result<u32, StepError> {
    Ok(a + b)
}

fn chain() -> Engine {
    let flow = Workflow::builder("wf")
        .start(Step::new("a", id))
        .then(Step::new("b", id).retry(RetryPolicy::limited(2, Duration::from_millis(150))))
        .build()
        .unwrap();
    Engine::new(flow, Limits::default())
}

fn diamond() -> Engine {
    let flow = Workflow::builder("wf")
        .start(Step::new("a", id))
        .then((Step::new("b", id), Step::new("c", id)))
        .then(Step::new("d", pair))
        .build()
        .unwrap();
    Engine::new(flow, Limits::default())
}

fn step(name: &str) -> StepName {
    StepName::new(name).unwrap()
}

fn delivery(headers: Headers, body: &'static [u8]) -> Incoming<'static> {
    Incoming {
        routing_key: "wf.run.triggered",
        redelivered: false,
        headers,
        message_id: Some("m"),
        body,
    }
}

/// The headers of an input of run `run_id` that its run join admitted (not a raw trigger).
fn run(run_id: &str) -> Headers {
    Headers::new()
        .with(header::RUN_ID, run_id)
        .with(header::RUN_ADMITTED, true)
}

fn keys(effects: &Effects) -> Vec<String> {
    effects
        .publish
        .iter()
        .map(|m| match &m.destination {
            Destination::Events(key) => key.to_string(),
            Destination::Step { step, delay, .. } => format!("step {step} after {delay:?}"),
            Destination::Join { join, .. } => format!("join {join}"),
            Destination::Parked(_) => "parked".to_owned(),
            other => format!("{other:?}"),
        })
        .collect()
}

fn admitted(engine: &Engine, name: &str, incoming: &Incoming<'_>) -> Attempt {
    match engine.admit(&step(name), incoming, "00-t-s-01", RunState::default()) {
        Admission::Run(attempt) => attempt,
        Admission::Settle(effects) => panic!("refused: {effects:?}"),
    }
}

#[test]
fn a_last_step_of_a_chain_reports_to_the_run_join() {
    let engine = chain();
    let incoming = delivery(run("r"), b"1");
    let attempt = admitted(&engine, "b", &incoming);
    assert_eq!(attempt.number(), 1);
    let started = engine.started(&attempt).unwrap();
    assert_eq!(started.message_id, "r:wf:b:started:1");
    let effects = engine.finished(
        &attempt,
        &incoming,
        AttemptOutcome::Succeeded {
            output: b"7".to_vec(),
        },
    );
    assert_eq!(keys(&effects), ["wf.step.b.succeeded", "join _run"]);
    assert_eq!(effects.publish[1].body, b"7");
    assert_eq!(
        effects.publish[1].headers.text(header::JOIN_PARENT),
        Some("b")
    );
    assert!(
        !effects.publish[0].mandatory,
        "no plain child needs `succeeded`"
    );
    assert!(effects.failure.is_none());
}

#[test]
fn a_step_with_a_plain_child_requires_its_succeeded_to_be_routed() {
    let engine = chain();
    let incoming = delivery(run("r"), b"1");
    let attempt = admitted(&engine, "a", &incoming);
    let effects = engine.finished(
        &attempt,
        &incoming,
        AttemptOutcome::Succeeded {
            output: b"1".to_vec(),
        },
    );
    assert_eq!(keys(&effects), ["wf.step.a.succeeded"]);
    assert!(effects.publish[0].mandatory);
}

#[test]
fn a_retry_reports_the_delay_it_really_waits_and_schedules_the_next_attempt() {
    let engine = chain();
    let incoming = delivery(run("r"), b"1");
    let attempt = admitted(&engine, "b", &incoming);
    let effects = engine.finished(
        &attempt,
        &incoming,
        AttemptOutcome::Retry {
            error: "nope".into(),
            delay: Duration::from_millis(150),
        },
    );
    assert_eq!(keys(&effects), ["wf.step.b.retrying", "step b after 200ms"]);
    let body: serde_json::Value = serde_json::from_slice(&effects.publish[0].body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"error": "nope", "attempt": 1, "next_attempt": 2, "delay_ms": 200})
    );
    assert_eq!(
        effects.publish[1].headers.int(header::RETRY_ATTEMPT),
        Some(2)
    );
    assert_eq!(effects.publish[1].body, b"1");
}

#[test]
fn a_final_failure_parks_the_input_and_fails_the_run_once() {
    let engine = chain();
    let incoming = delivery(run("r").with(header::RETRY_ATTEMPT, 3_u32), b"1");
    let attempt = admitted(&engine, "b", &incoming);
    assert_eq!(attempt.number(), 3);
    let effects = engine.finished(
        &attempt,
        &incoming,
        AttemptOutcome::Failed {
            error: "gone".into(),
            reason: FailureReason::RetriesExhausted,
        },
    );
    assert_eq!(keys(&effects), ["parked", "wf.step.b.failed", "join _run"]);
    let parked = effects.parked().unwrap();
    assert_eq!(
        parked.headers.text(header::PARKED_REASON),
        Some("retries_exhausted")
    );
    assert_eq!(parked.headers.int(header::PARKED_ATTEMPT), Some(3));
    assert_eq!(
        effects.failure.unwrap().reason,
        FailureReason::RetriesExhausted
    );
}

#[test]
fn a_failure_in_a_branch_tells_every_join_downstream_and_the_run_join() {
    let engine = diamond();
    let incoming = delivery(run("r"), b"1");
    let attempt = admitted(&engine, "c", &incoming);
    let effects = engine.finished(
        &attempt,
        &incoming,
        AttemptOutcome::Failed {
            error: "bad".into(),
            reason: FailureReason::Fatal,
        },
    );
    assert_eq!(
        keys(&effects),
        ["parked", "wf.step.c.failed", "join d", "join _run"]
    );
    assert!(effects.publish[2].headers.contains(header::JOIN_FAILED));
}

#[test]
fn an_unroutable_outcome_fails_the_step_as_unroutable() {
    let engine = chain();
    let incoming = delivery(run("r"), b"1");
    let attempt = admitted(&engine, "a", &incoming);
    let effects = engine.unroutable(&attempt, &incoming, "wf.step.a.succeeded");
    assert_eq!(keys(&effects), ["parked", "wf.step.a.failed", "join _run"]);
    let failure = effects.failure.unwrap();
    assert_eq!(failure.reason, FailureReason::Unroutable);
    assert!(failure.error.contains("wf.step.a.succeeded"));
}
