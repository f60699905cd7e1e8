//! The engine's rules, checked with plain values: no broker, no clock, no runtime.

use std::time::Duration;

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
fn too_large_inputs_are_parked_without_running() {
    let limits = Limits {
        max_input_bytes: 4,
        ..Limits::default()
    };
    let engine = Engine::new(chain().workflow().clone(), limits);
    let Admission::Settle(effects) = engine.admit(
        &step("a"),
        &delivery(run("r"), b"12345"),
        "t",
        RunState::default(),
    ) else {
        panic!("should not run");
    };
    assert_eq!(keys(&effects), ["parked", "wf.step.a.failed", "join _run"]);
    assert_eq!(effects.failure.unwrap().reason, FailureReason::TooLarge);
    let at_limit = engine.admit(
        &step("a"),
        &delivery(run("r"), b"1234"),
        "t",
        RunState::default(),
    );
    assert!(matches!(at_limit, Admission::Run(_)));
}

#[test]
fn an_output_too_large_to_pass_on_fails_the_step_and_publishes_no_success() {
    let limits = Limits {
        max_input_bytes: 4,
        ..Limits::default()
    };
    let engine = Engine::new(chain().workflow().clone(), limits);
    let input = delivery(run("r"), b"1");
    let attempt = admitted(&engine, "a", &input);
    let effects = engine.finished(
        &attempt,
        &input,
        AttemptOutcome::Succeeded {
            output: b"12345".to_vec(),
        },
    );
    assert_eq!(keys(&effects), ["parked", "wf.step.a.failed", "join _run"]);
    let failure = effects.failure.unwrap();
    assert_eq!(failure.reason, FailureReason::TooLarge);
    assert!(
        failure.error.contains("output is 5 bytes"),
        "{}",
        failure.error
    );
    let at_limit = engine.finished(
        &attempt,
        &input,
        AttemptOutcome::Succeeded {
            output: b"1234".to_vec(),
        },
    );
    assert_eq!(keys(&at_limit), ["wf.step.a.succeeded"]);
}

#[test]
fn a_redelivery_on_a_step_queue_moves_to_the_redelivered_queue_uncounted() {
    let engine = chain();
    // Quorum (the broker's count) and classic (the redelivered flag) alike.
    let quorum = delivery(run("r").with(header::X_DELIVERY_COUNT, 1_u32), b"1");
    let mut classic = delivery(run("r"), b"1");
    classic.redelivered = true;
    for returned in [quorum, classic] {
        let Admission::Settle(moved) =
            engine.admit(&step("a"), &returned, "t", RunState::default())
        else {
            panic!("a redelivery does not run on the step's queue");
        };
        assert_eq!(keys(&moved), ["Redelivered(WorkflowName(\"wf\"))"]);
        let copy = &moved.publish[0];
        assert!(copy.inherit_headers);
        assert_eq!(copy.headers.int(header::REDELIVERY_COUNT), Some(0));
        assert_eq!(copy.headers.text(header::REDELIVERED_STEP), Some("a"));
        assert!(moved.failure.is_none());
    }
    let fresh = delivery(run("r").with(header::X_DELIVERY_COUNT, 0_u32), b"1");
    assert!(matches!(
        engine.admit(&step("a"), &fresh, "t", RunState::default()),
        Admission::Run(_)
    ));
}

#[test]
fn a_step_limited_across_the_fleet_counts_its_redeliveries_in_place() {
    let flow = Workflow::builder("wf")
        .start(Step::new("a", id).fleet_concurrency(3))
        .build()
        .unwrap();
    let engine = Engine::new(flow, Limits::default());
    let returned = |n: u32| delivery(run("r").with(header::X_DELIVERY_COUNT, n), b"1");
    assert!(
        matches!(
            engine.admit(&step("a"), &returned(5), "t", RunState::default()),
            Admission::Run(_)
        ),
        "not moved: run where it is"
    );
    let Admission::Settle(parked) =
        engine.admit(&step("a"), &returned(6), "t", RunState::default())
    else {
        panic!("past the limit");
    };
    assert_eq!(
        parked.failure.unwrap().reason,
        FailureReason::RedeliveryLimit
    );
    let mut classic = delivery(run("r").with(header::REDELIVERY_COUNT, 1_u32), b"1");
    classic.redelivered = true;
    let Admission::Settle(again) = engine.admit(&step("a"), &classic, "t", RunState::default())
    else {
        panic!("a classic redelivery goes round its own queue with its count");
    };
    assert_eq!(keys(&again), ["step a after 0ns"]);
    assert_eq!(
        again.publish[0].headers.int(header::REDELIVERY_COUNT),
        Some(2)
    );
}

#[test]
fn in_the_redelivered_queue_each_unacknowledged_start_counts_up_to_the_limit() {
    let engine = chain();
    let lane = |carried: u32, returned: u32| {
        run("r")
            .with(header::REDELIVERED_STEP, "a")
            .with(header::REDELIVERY_COUNT, carried)
            .with(header::X_DELIVERY_COUNT, returned)
    };
    let admit = |headers: Headers| {
        engine.admit_redelivered(
            &step("a"),
            &delivery(headers, b"1"),
            "t",
            RunState::default(),
        )
    };
    assert!(matches!(admit(lane(0, 0)), Admission::Run(_)));
    assert!(
        matches!(admit(lane(2, 3)), Admission::Run(_)),
        "5 is the limit"
    );
    let Admission::Settle(parked) = admit(lane(3, 3)) else {
        panic!("past the limit");
    };
    assert_eq!(
        parked.failure.unwrap().reason,
        FailureReason::RedeliveryLimit
    );
    // Another step's input in the queue, or none named: parked, never run as this step's.
    let Admission::Settle(wrong) = admit(run("r").with(header::REDELIVERED_STEP, "b")) else {
        panic!("another step's input");
    };
    assert_eq!(wrong.failure.unwrap().reason, FailureReason::Undecodable);
    // Classic queues: a redelivery goes round again with its count raised.
    let mut classic = delivery(
        run("r")
            .with(header::REDELIVERED_STEP, "a")
            .with(header::REDELIVERY_COUNT, 2_u32),
        b"1",
    );
    classic.redelivered = true;
    let Admission::Settle(again) =
        engine.admit_redelivered(&step("a"), &classic, "t", RunState::default())
    else {
        panic!("a classic redelivery goes round once more with its count");
    };
    assert_eq!(
        again.publish[0].headers.int(header::REDELIVERY_COUNT),
        Some(3)
    );
    assert!(again.failure.is_none());
}

#[test]
fn a_panic_in_the_runtime_parks_the_input_as_internal_and_fails_the_step() {
    let engine = chain();
    let input = delivery(run("r"), b"1");
    let effects = engine.internal_failure(&step("a"), &input, "index out of bounds", "t");
    assert_eq!(keys(&effects), ["parked", "wf.step.a.failed", "join _run"]);
    let failure = effects.failure.unwrap();
    assert_eq!(failure.reason, FailureReason::Internal);
    assert!(
        failure.error.ends_with("index out of bounds"),
        "{}",
        failure.error
    );
}

#[test]
fn a_message_without_a_run_id_is_parked_and_nothing_else() {
    let engine = chain();
    let Admission::Settle(effects) = engine.admit(
        &step("a"),
        &delivery(Headers::new(), b"1"),
        "t",
        RunState::default(),
    ) else {
        panic!("should not run");
    };
    assert_eq!(keys(&effects), ["parked"]);
    assert_eq!(effects.failure.unwrap().error, "missing `run-id` header");
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

#[test]
fn a_join_fires_once_and_parks_what_it_cannot_read() {
    let engine = diamond();
    let mut book = JoinBook::new();
    let piece = |parent: &str, body: &'static [u8]| {
        delivery(run("r").with(header::JOIN_PARENT, parent), body)
    };
    assert!(
        engine
            .join_piece("d", &mut book, &piece("c", b"2"), "t")
            .publish
            .is_empty()
    );
    let fired = engine.join_piece("d", &mut book, &piece("b", b"1"), "t");
    assert_eq!(keys(&fired), ["step d after 0ns"]);
    assert_eq!(fired.publish[0].body, b"[1,2]");
    let again = engine.join_piece("d", &mut book, &piece("b", b"1"), "t");
    assert!(again.publish.is_empty(), "a duplicate piece fires nothing");
    let broken = engine.join_piece("d", &mut book, &delivery(run("r"), b"1"), "t");
    assert_eq!(keys(&broken), ["parked"]);
    assert_eq!(
        broken.parked().unwrap().headers.text(header::PARKED_STEP),
        Some("d")
    );
}

#[test]
fn the_run_join_ends_the_run_with_every_last_output() {
    let engine = diamond();
    let mut book = JoinBook::new();
    let piece = delivery(run("r").with(header::JOIN_PARENT, "d"), b"3");
    let effects = engine.join_piece(RUN_JOIN_NAME, &mut book, &piece, "t");
    assert_eq!(keys(&effects), ["wf.run.succeeded"]);
    assert_eq!(effects.publish[0].body, br#"{"d":3}"#);
    assert_eq!(
        effects.publish[0].event_key(),
        Some(&RoutingKey::from_wire("wf.run.succeeded"))
    );
}

const RUN_JOIN_NAME: &str = crate::protocol::RUN_JOIN;

#[test]
fn inputs_of_a_cancelled_run_or_a_failed_generation_are_parked_and_skipped() {
    let engine = diamond();
    let cancelled = RunState {
        end: Some(RunEnd {
            how: RunEnding::Cancelled,
            generation: 1,
        }),
        resumed: 0,
    };
    let incoming = delivery(run("r"), b"1");
    let Admission::Settle(effects) = engine.admit(&step("b"), &incoming, "t", cancelled) else {
        panic!("a cancelled run runs nothing");
    };
    assert_eq!(keys(&effects), ["parked", "wf.step.b.skipped"]);
    assert_eq!(effects.failure.unwrap().reason, FailureReason::RunCancelled);
    let failed = RunState {
        end: Some(RunEnd {
            how: RunEnding::Failed,
            generation: 1,
        }),
        resumed: 0,
    };
    let Admission::Settle(effects) = engine.admit(&step("b"), &incoming, "t", failed) else {
        panic!("a failed run takes no new step");
    };
    assert_eq!(effects.failure.unwrap().reason, FailureReason::RunFailed);
    let resumed = delivery(run("r").with(header::RUN_GENERATION, 2_u32), b"1");
    let Admission::Run(attempt) = engine.admit(&step("b"), &resumed, "t", failed) else {
        panic!("a resumed generation runs");
    };
    assert_eq!(attempt.id().generation, 2);
    let patient = Engine::new(
        Workflow::builder("wf")
            .fail_fast(false)
            .start(Step::new("a", id))
            .build()
            .unwrap(),
        Limits::default(),
    );
    assert!(matches!(
        patient.admit(&step("a"), &incoming, "t", failed),
        Admission::Run(_)
    ));
}

#[test]
fn an_older_generation_arriving_after_a_resume_runs_in_the_resumed_generation() {
    let engine = diamond();
    let mut known = RunState::default();
    known.ended(RunEnd {
        how: RunEnding::Failed,
        generation: 1,
    });
    // A sibling's generation-1 input, redelivered after its runner died, once the run was
    // resumed to generation 2: it runs, in generation 2, so that generation 2 can end.
    known.resumed(2);
    let late = delivery(run("r"), b"1");
    let Admission::Run(attempt) = engine.admit(&step("b"), &late, "t", known) else {
        panic!("a resumed run takes its older inputs");
    };
    assert_eq!(attempt.id().generation, 2);
    let outcome = AttemptOutcome::Succeeded {
        output: b"2".to_vec(),
    };
    let effects = engine.finished(&attempt, &late, outcome);
    assert!(
        effects
            .publish
            .iter()
            .all(|m| m.headers.int(header::RUN_GENERATION) == Some(2)),
        "every outcome of it is in generation 2: {:?}",
        effects.publish
    );
    // The resumed generation failing again stops it once more.
    known.ended(RunEnd {
        how: RunEnding::Failed,
        generation: 2,
    });
    assert!(matches!(
        engine.admit(&step("b"), &late, "t", known),
        Admission::Settle(_)
    ));
    // An older end never hides a newer one.
    known.ended(RunEnd {
        how: RunEnding::Cancelled,
        generation: 1,
    });
    assert_eq!(known.end.map(|e| e.generation), Some(2));
}

#[test]
fn the_run_join_cancels_once_and_answers_the_canceller() {
    let engine = diamond();
    let mut book = JoinBook::new();
    let request = |reply: Option<&str>| {
        let message = crate::protocol::cancel_request(
            engine.workflow().name(),
            &RunId::new("r").unwrap(),
            "stop",
            reply,
        );
        delivery(message.headers, b"{\"reason\":\"stop\"}")
    };
    let effects = engine.join_piece(
        RUN_JOIN_NAME,
        &mut book,
        &request(Some("amq.rabbitmq.reply-to")),
        "t",
    );
    assert_eq!(
        keys(&effects),
        ["wf.run.cancelled", "Reply(\"amq.rabbitmq.reply-to\")"]
    );
    let reply: crate::protocol::CancelReply =
        serde_json::from_slice(&effects.publish[1].body).unwrap();
    assert_eq!(reply, crate::protocol::CancelReply::Cancelled);
    let again = engine.join_piece(RUN_JOIN_NAME, &mut book, &request(Some("q")), "t");
    let reply: crate::protocol::CancelReply =
        serde_json::from_slice(&again.publish[0].body).unwrap();
    assert_eq!(
        reply,
        crate::protocol::CancelReply::Refused {
            ended: "cancelled".into()
        }
    );
    let late = delivery(run("r").with(header::JOIN_PARENT, "d"), b"3");
    assert!(
        engine
            .join_piece(RUN_JOIN_NAME, &mut book, &late, "t")
            .publish
            .is_empty(),
        "a cancelled run never succeeds"
    );
}

#[test]
fn a_trigger_goes_to_the_run_join_which_admits_a_new_run_once() {
    let engine = diamond();
    let trigger = delivery(Headers::new().with(header::RUN_ID, "r"), b"1");
    let Admission::Settle(effects) = engine.admit(&step("a"), &trigger, "t", RunState::default())
    else {
        panic!("a raw trigger is not run before the run join admits it");
    };
    let begin = &effects.publish[0];
    assert_eq!(
        begin.destination,
        Destination::Join {
            workflow: engine.workflow().name().clone(),
            join: RUN_JOIN_NAME.to_owned(),
            shard: crate::protocol::Names::join_shard("r"),
        }
    );
    assert!(begin.headers.contains(header::JOIN_BEGIN));

    let mut book = JoinBook::new();
    let piece = delivery(begin.headers.clone().with(header::RUN_ID, "r"), b"1");
    let admitted = engine.join_piece(RUN_JOIN_NAME, &mut book, &piece, "t");
    assert_eq!(admitted.publish.len(), 1, "{:?}", admitted.publish);
    let input = &admitted.publish[0];
    assert!(matches!(&input.destination, Destination::Step { step: s, .. } if s.as_str() == "a"));
    let input = delivery(input.headers.clone(), b"1");
    assert!(matches!(
        engine.admit(&step("a"), &input, "t", RunState::default()),
        Admission::Run(_)
    ));

    // A second trigger of the same run id starts nothing, and says the run is going.
    let again = engine.join_piece(RUN_JOIN_NAME, &mut book, &piece, "t");
    assert_eq!(keys(&again), ["wf.run.duplicate"]);
    assert_eq!(again.publish[0].body, br#"{"state":"running"}"#);
    // The same trigger delivered again (its runner died after sending it on) is no second
    // trigger.
    let copy = delivery(
        piece
            .headers
            .clone()
            .with(header::TRIGGER_REDELIVERED, true),
        b"1",
    );
    assert!(
        engine
            .join_piece(RUN_JOIN_NAME, &mut book, &copy, "t")
            .publish
            .is_empty()
    );

    // Once the run has ended, a trigger learns how.
    let last = delivery(run("r").with(header::JOIN_PARENT, "d"), b"3");
    engine.join_piece(RUN_JOIN_NAME, &mut book, &last, "t");
    let late = engine.join_piece(RUN_JOIN_NAME, &mut book, &piece, "t");
    assert_eq!(keys(&late), ["wf.run.duplicate"]);
    assert_eq!(late.publish[0].body, br#"{"state":"succeeded"}"#);
}

#[test]
fn without_unique_runs_a_trigger_runs_at_once() {
    let engine = Engine::new(
        Workflow::builder("wf")
            .unique_runs(false)
            .start(Step::new("a", id))
            .build()
            .unwrap(),
        Limits::default(),
    );
    let trigger = delivery(Headers::new().with(header::RUN_ID, "r"), b"1");
    assert!(matches!(
        engine.admit(&step("a"), &trigger, "t", RunState::default()),
        Admission::Run(_)
    ));
}
