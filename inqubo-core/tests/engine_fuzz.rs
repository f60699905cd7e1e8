//! Every input that can reach a runner, as the engine sees it: arbitrary headers of every type
//! Inqubo reads, any body, any run id and message id, first or redelivered. The engine must
//! never panic; what it refuses it parks with a reason (and the parked copy's headers stay
//! within what a broker carries); what it runs, it can finish in every way.

use std::time::Duration;

use inqubo_core::{
    AttemptOutcome, FailureReason, Step, StepContext, StepError, Workflow,
    engine::{Admission, Engine, Limits, RunState},
    join::JoinBook,
    protocol::{Destination, Headers, Incoming, MAX_ERROR_HEADER_LEN, RUN_JOIN, header},
};
use proptest::prelude::*;

async fn id(n: u32, _: StepContext) -> Result<u32, StepError> {
    Ok(n)
}
async fn pair((a, b): (u32, u32), _: StepContext) -> Result<u32, StepError> {
    Ok(a + b)
}

fn engine() -> Engine {
    let flow = Workflow::builder("wf")
        .start(Step::new("a", id))
        .then((Step::new("b", id), Step::new("c", id)))
        .then(Step::new("d", pair))
        .build()
        .unwrap();
    let limits = Limits {
        max_input_bytes: 1024,
        ..Limits::default()
    };
    Engine::new(flow, limits)
}

/// Text of any shape: empty, long (past the 255-byte short-string limit), any Unicode.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z0-9-]{1,20}",
        ".{0,40}",
        "[a-zé€😀]{200,300}",
    ]
}

#[derive(Debug, Clone)]
enum Value {
    Text(String),
    Int(i64),
    Bool(bool),
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        text().prop_map(Value::Text),
        any::<i64>().prop_map(Value::Int),
        prop_oneof![
            Just(0_i64),
            Just(1),
            Just(2),
            Just(6),
            Just(-1),
            Just(u32::MAX as i64 + 1)
        ]
        .prop_map(Value::Int),
        any::<bool>().prop_map(Value::Bool),
    ]
}

fn headers() -> impl Strategy<Value = Headers> {
    let names = prop_oneof![
        Just(header::RUN_ID),
        Just(header::RETRY_ATTEMPT),
        Just(header::RUN_GENERATION),
        Just(header::REDELIVERY_COUNT),
        Just(header::REDELIVERED_STEP),
        Just(header::X_DELIVERY_COUNT),
        Just(header::RUN_ADMITTED),
        Just(header::JOIN_BEGIN),
        Just(header::JOIN_PARENT),
        Just(header::JOIN_FAILED),
        Just(header::JOIN_CANCEL),
        Just(header::TRIGGER_REDELIVERED),
        Just(header::TRACEPARENT),
        Just(header::REPLY_TO),
        Just("x-unknown"),
    ];
    proptest::collection::vec((names, value()), 0..8).prop_map(|pairs| {
        let mut headers = Headers::new();
        for (name, value) in pairs {
            match value {
                Value::Text(t) => headers.insert(name, t),
                Value::Int(n) => headers.insert(name, n),
                Value::Bool(b) => headers.insert(name, b),
            }
        }
        headers
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        Just(b"7".to_vec()),
        Just(b"[1,2]".to_vec()),
        Just(br#"{"step":"b","error":"e","attempt":1,"reason":"fatal"}"#.to_vec()),
        Just(br#"{"reason":"stop"}"#.to_vec()),
        proptest::collection::vec(any::<u8>(), 1000..1100),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn no_input_panics_the_engine_and_every_refusal_is_parked(
        headers in headers(),
        body in body(),
        message_id in proptest::option::of(text()),
        redelivered in any::<bool>(),
        step in prop_oneof![Just("a"), Just("b"), Just("d"), Just("nope")],
        from_redelivered_queue in any::<bool>(),
        output in body(),
        error in prop_oneof![text(), Just("x".repeat(10_000))],
    ) {
        let engine = engine();
        let incoming = Incoming {
            routing_key: "wf.run.triggered",
            redelivered,
            headers,
            message_id: message_id.as_deref(),
            body: &body,
        };
        let step_name = inqubo_core::StepName::new(step).unwrap();
        let admission = if from_redelivered_queue {
            engine.admit_redelivered(&step_name, &incoming, "00-t-s-01", RunState::default())
        } else {
            engine.admit(&step_name, &incoming, "00-t-s-01", RunState::default())
        };
        let _ = engine.internal_failure(&step_name, &incoming, &error, "00-t-s-01");
        match admission {
            Admission::Settle(effects) => {
                if let Some(failure) = &effects.failure {
                    let parked = effects.parked();
                    prop_assert!(parked.is_some(), "refused without parking: {failure:?}");
                    let parked = parked.unwrap();
                    prop_assert!(matches!(parked.destination, Destination::Parked(_)));
                    let cut = parked.headers.text(header::PARKED_ERROR).unwrap_or_default();
                    prop_assert!(cut.len() <= MAX_ERROR_HEADER_LEN);
                }
            }
            Admission::Run(attempt) => {
                let outcomes = [
                    AttemptOutcome::Succeeded { output: output.clone() },
                    AttemptOutcome::Retry { error: error.clone(), delay: Duration::from_millis(1) },
                    AttemptOutcome::Failed { error: error.clone(), reason: FailureReason::Fatal },
                ];
                for outcome in outcomes {
                    let effects = engine.finished(&attempt, &incoming, outcome);
                    for message in &effects.publish {
                        let cut = message.headers.text(header::PARKED_ERROR).unwrap_or_default();
                        prop_assert!(cut.len() <= MAX_ERROR_HEADER_LEN);
                    }
                }
                let _ = engine.started(&attempt);
                let _ = engine.unroutable(&attempt, &incoming, "wf.step.a.succeeded");
            }
        }
        // The same message as a join piece, for the join step and for the run join.
        for join in ["d", RUN_JOIN, "nope"] {
            let mut book = JoinBook::new();
            let effects = engine.join_piece(join, &mut book, &incoming, "00-t-s-01");
            if effects.failure.is_some() {
                prop_assert!(effects.parked().is_some());
            }
            let _ = engine.join_snapshot(join, 0, &book);
        }
    }
}
