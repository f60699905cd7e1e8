//! Refusals: inputs the engine parks, moves or counts instead of running (too large,
//! redelivered, unreadable), and outputs and panics that fail a step.

use super::*;

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
