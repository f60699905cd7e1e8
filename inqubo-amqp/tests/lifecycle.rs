//! The run lifecycle against the real RabbitMQ: cancels that are refused, that come before a
//! run or while no runner is up, and resumes with nothing to resume. (Resume, cancel and fail
//! fast in the middle of runs are scenarios of `inqubo/tests/behaviour.rs`, on both backends.)

use std::time::Duration;

use inqubo_amqp::{Error, RunOutcome};
use inqubo_core::{EventKind, Step, StepContext, StepError, Workflow};
use inqubo_testkit::{Events, TestBroker, run_id};

async fn double(n: u64, _: StepContext) -> Result<u64, StepError> {
    Ok(n * 2)
}

fn chain(name: &str) -> Workflow {
    Workflow::builder(name)
        .start(Step::new("first", double))
        .then(Step::new("second", double))
        .build()
        .unwrap()
}

const ANSWER: Duration = Duration::from_secs(20);

/// Waits for run event `kind` of `run`.
async fn run_event(events: &mut Events, run: &str, kind: EventKind) {
    events
        .until(|seen| {
            seen.iter()
                .any(|e| e.run_id.as_str() == run && e.kind == kind)
        })
        .await;
}

#[tokio::test]
async fn cancelling_a_finished_run_is_refused_with_how_it_ended() {
    let broker = TestBroker::new();
    let flow = chain("finished");
    let runner = broker.start_runner(&flow).await;
    let outcome = runner
        .trigger_and_wait(run_id("done"), &1_u64, ANSWER)
        .await
        .unwrap();
    assert_eq!(
        outcome,
        RunOutcome::Succeeded(serde_json::json!({"second": 4}))
    );

    let error = runner
        .client()
        .cancel(flow.name(), &run_id("done"), "too late", ANSWER)
        .await
        .unwrap_err();

    assert!(
        matches!(&error, Error::CancelRefused { ended, .. } if ended == "succeeded"),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "run `done` was not cancelled: it had already succeeded"
    );
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_run_cancelled_before_its_trigger_never_runs() {
    let broker = TestBroker::new();
    let flow = chain("early");
    let runner = broker.start_runner(&flow).await;
    let mut events = Events::subscribe_to(runner.client(), Some(flow.name())).await;
    runner
        .client()
        .cancel(flow.name(), &run_id("e1"), "not wanted", ANSWER)
        .await
        .unwrap();
    run_event(&mut events, "e1", EventKind::RunCancelled).await;

    runner.trigger(run_id("e1"), &1_u64).await.unwrap();
    events.wait_for("e1", "first", EventKind::Skipped).await;

    assert_eq!(
        events.trail("e1"),
        ["run.cancelled", "run.triggered", "first.skipped"]
    );
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_runner_started_after_a_cancel_still_honours_it() {
    let broker = TestBroker::new();
    let flow = chain("late");
    let first = broker.start_runner(&flow).await;
    first
        .client()
        .cancel(flow.name(), &run_id("l1"), "stop", ANSWER)
        .await
        .unwrap();
    first.shutdown().await.unwrap();

    // A new runner knows only what the run-state stream tells it.
    let second = broker.start_runner(&flow).await;
    let mut events = Events::subscribe_to(second.client(), Some(flow.name())).await;
    second.trigger(run_id("l1"), &1_u64).await.unwrap();
    events.wait_for("l1", "first", EventKind::Skipped).await;

    assert!(
        !events.trail("l1").contains(&"first.started".to_owned()),
        "{:?}",
        events.trail("l1")
    );
    second.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_cancel_sent_while_no_runner_is_up_waits_and_ends_the_run_once() {
    let broker = TestBroker::new();
    let flow = chain("queued");
    // Declare the topology, then leave no runner up.
    broker.start_runner(&flow).await.shutdown().await.unwrap();
    let client = broker.client().await;
    let mut events = Events::subscribe_to(&client, Some(flow.name())).await;
    client
        .trigger(flow.name(), run_id("q1"), &1_u64)
        .await
        .unwrap();

    let error = client
        .cancel(
            flow.name(),
            &run_id("q1"),
            "stop",
            Duration::from_millis(500),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, Error::CancelUnanswered { .. }), "{error:?}");
    assert!(error.is_transient());

    let runner = broker.start_runner(&flow).await;
    run_event(&mut events, "q1", EventKind::RunCancelled).await;
    // Whatever ran before the runner saw the cancel, the run ends once, cancelled.
    let ends: Vec<String> = events
        .trail("q1")
        .into_iter()
        .filter(|e| e.starts_with("run.") && e != "run.triggered")
        .collect();
    assert_eq!(ends, ["run.cancelled"]);
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn resuming_a_run_with_nothing_parked_says_so() {
    let broker = TestBroker::new();
    let flow = chain("nothing");
    let runner = broker.start_runner(&flow).await;
    runner
        .trigger_and_wait(run_id("n1"), &1_u64, ANSWER)
        .await
        .unwrap();

    let error = runner
        .client()
        .resume(flow.name(), &run_id("n1"))
        .await
        .unwrap_err();

    assert!(matches!(error, Error::NothingToResume { .. }), "{error:?}");
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_run_id_of_the_longest_length_runs_to_its_end_and_can_be_cancelled() {
    let broker = TestBroker::new();
    let flow = chain("longid");
    let runner = broker.start_runner(&flow).await;
    // Every message id built from a run id this long passes AMQP's 255-byte limit.
    let long = "r".repeat(inqubo_core::MAX_RUN_ID_LEN);
    let outcome = runner
        .trigger_and_wait(run_id(long.clone()), &1_u64, ANSWER)
        .await
        .unwrap();
    assert_eq!(
        outcome,
        RunOutcome::Succeeded(serde_json::json!({"second": 4}))
    );
    let refused = runner
        .client()
        .cancel(flow.name(), &run_id(long), "late", ANSWER)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, Error::CancelRefused { .. }),
        "{refused:?}"
    );
    runner.shutdown().await.unwrap();
}
