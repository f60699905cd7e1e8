//! The run as a whole: joins, the run join's ending, cancels, resumes and unique runs.

use super::*;

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
            slot: crate::protocol::Names::join_slot("r"),
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
