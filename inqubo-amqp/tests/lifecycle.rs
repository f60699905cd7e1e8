//! The run lifecycle against the real RabbitMQ: cancels that are refused, that come before a
//! run or while no runner is up, and resumes with nothing to resume. (Resume, cancel and fail
//! fast in the middle of runs are scenarios of `inqubo/tests/behaviour.rs`, on both backends.)

use std::time::Duration;

use inqubo_amqp::{Error, RunOutcome};
use inqubo_core::{EventKind, RetryPolicy, Step, StepContext, StepError, Workflow};
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
    run_event(&mut events, "e1", EventKind::RunDuplicate).await;

    // The run join knows the run (cancelled): the trigger starts nothing.
    assert_eq!(events.trail("e1"), ["run.cancelled", "run.duplicate"]);
    let duplicate = events.seen().last().unwrap();
    assert_eq!(duplicate.body, serde_json::json!({"state": "cancelled"}));
    runner.shutdown().await.unwrap();
}

/// A trigger held by the broker for 2 s starts its run 2 to 3 s later; a run cancelled while
/// its trigger waits never starts.
#[tokio::test]
async fn a_delayed_trigger_starts_its_run_later_unless_the_run_is_cancelled_meanwhile() {
    let broker = TestBroker::new();
    let flow = chain("later");
    let runner = broker.start_runner(&flow).await;
    let mut events = Events::subscribe_to(runner.client(), Some(flow.name())).await;
    let client = runner.client();
    let delay = Duration::from_secs(2);

    let sent = std::time::Instant::now();
    for run in ["d1", "d2"] {
        client
            .trigger_after(flow.name(), run_id(run), &1_u64, delay)
            .await
            .unwrap();
    }
    client
        .cancel(flow.name(), &run_id("d2"), "not wanted after all", ANSWER)
        .await
        .unwrap();
    events.wait_for("d1", "first", EventKind::Started).await;
    let waited = sent.elapsed();
    run_event(&mut events, "d1", EventKind::RunSucceeded).await;
    run_event(&mut events, "d2", EventKind::RunDuplicate).await;

    assert!(
        waited >= delay - Duration::from_millis(50) && waited <= Duration::from_secs(3),
        "started after {waited:?}"
    );
    assert_eq!(events.trail("d2"), ["run.cancelled", "run.duplicate"]);
    let past_longest = client
        .trigger_after(
            flow.name(),
            run_id("d3"),
            &1_u64,
            Duration::from_secs(40 * 86_400),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(past_longest, Error::DelayTooLong { .. }),
        "{past_longest:?}"
    );
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_runner_started_after_a_cancel_still_honours_it() {
    let broker = TestBroker::new();
    // Triggers go straight to the first step: only the run-state stream can stop it.
    let flow = Workflow::builder("late")
        .unique_runs(false)
        .start(Step::new("first", double))
        .then(Step::new("second", double))
        .build()
        .unwrap();
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

/// Fails for good on its first attempt, succeeds on the next (a bug fixed before the resume).
async fn fatal_at_first(n: u64, ctx: StepContext) -> Result<u64, StepError> {
    if ctx.attempt == 1 {
        return Err(StepError::fatal("broken until resumed"));
    }
    Ok(n + 1)
}

/// Fails on its first attempt, so that its retry comes back after a delay.
async fn slow_to_succeed(n: u64, ctx: StepContext) -> Result<u64, StepError> {
    if ctx.attempt == 1 {
        return Err(StepError::retryable("not yet"));
    }
    Ok(n + 2)
}

#[tokio::test]
async fn a_sibling_input_arriving_after_a_resume_runs_in_the_resumed_generation() {
    let broker = TestBroker::new();
    // `c`'s first attempt fails and its retry waits in the delay tiers while `b` fails for
    // good, the run fails and is resumed: the retry reaches `c` in generation 1, after the
    // resume. It must run in generation 2, or generation 2 waits for `c` for ever.
    let flow = Workflow::builder("sibling")
        .start(Step::new("a", double))
        .then((
            Step::new("b", fatal_at_first),
            Step::new("c", slow_to_succeed).retry(RetryPolicy::limited(1, Duration::from_secs(3))),
        ))
        .build()
        .unwrap();
    let runner = broker.start_runner(&flow).await;
    let mut events = Events::subscribe_to(runner.client(), Some(flow.name())).await;
    runner.trigger(run_id("s1"), &1_u64).await.unwrap();
    run_event(&mut events, "s1", EventKind::RunFailed).await;

    let resumed = runner
        .client()
        .resume(flow.name(), &run_id("s1"))
        .await
        .unwrap();
    assert_eq!(
        (resumed.generation, resumed.inputs),
        (2, 1),
        "only b's input was parked"
    );
    run_event(&mut events, "s1", EventKind::RunSucceeded).await;

    let c_succeeded = events
        .seen()
        .iter()
        .find(|e| e.run_id.as_str() == "s1" && e.short_name() == "c.succeeded")
        .expect("c ran after the resume");
    assert_eq!(c_succeeded.generation, 2);
    let end = events
        .seen()
        .iter()
        .find(|e| e.run_id.as_str() == "s1" && e.kind == EventKind::RunSucceeded)
        .unwrap();
    assert_eq!(
        (end.generation, end.body.clone()),
        (2, serde_json::json!({"b": 3, "c": 4}))
    );
    assert!(
        !events.trail("s1").contains(&"c.skipped".to_owned()),
        "{:?}",
        events.trail("s1")
    );
    runner.shutdown().await.unwrap();
}

/// Waits until the test lets it go, so that a run stays running.
async fn held(n: u64, ctx: StepContext) -> Result<u64, StepError> {
    // The run is cancelled at the end of the test if nothing else lets it go.
    ctx.cancelled().await;
    Ok(n)
}

#[tokio::test]
async fn a_second_trigger_of_a_running_run_attaches_to_it_and_starts_nothing() {
    let broker = TestBroker::new();
    let flow = Workflow::builder("unique")
        .start(Step::new("first", double))
        .then(Step::new("hold", held))
        .build()
        .unwrap();
    let runner = broker.start_runner(&flow).await;
    let mut events = Events::subscribe_to(runner.client(), Some(flow.name())).await;
    runner.trigger(run_id("u1"), &1_u64).await.unwrap();
    events.wait_for("u1", "hold", EventKind::Started).await;

    // A second trigger with other input, while the run holds: nothing new runs, and a
    // waiting client attaches to the run that exists.
    let client = runner.client().clone();
    let attached = tokio::spawn(async move {
        client
            .trigger_and_wait(&"unique".parse().unwrap(), run_id("u1"), &50_u64, ANSWER)
            .await
    });
    run_event(&mut events, "u1", EventKind::RunDuplicate).await;
    let duplicate = events
        .seen()
        .iter()
        .find(|e| e.kind == EventKind::RunDuplicate)
        .unwrap();
    assert_eq!(duplicate.body, serde_json::json!({"state": "running"}));
    runner
        .client()
        .cancel(flow.name(), &run_id("u1"), "let it go", ANSWER)
        .await
        .unwrap();
    let outcome = attached.await.unwrap().unwrap();
    assert!(matches!(outcome, RunOutcome::Cancelled(_)), "{outcome:?}");
    let firsts = events
        .trail("u1")
        .iter()
        .filter(|e| *e == "first.started")
        .count();
    assert_eq!(firsts, 1, "{:?}", events.trail("u1"));
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_trigger_of_a_run_that_succeeded_starts_nothing_and_says_how_it_ended() {
    let broker = TestBroker::new();
    let flow = chain("again");
    let runner = broker.start_runner(&flow).await;
    let first = runner
        .trigger_and_wait(run_id("a1"), &1_u64, ANSWER)
        .await
        .unwrap();
    assert_eq!(
        first,
        RunOutcome::Succeeded(serde_json::json!({"second": 4}))
    );
    let mut events = Events::subscribe_to(runner.client(), Some(flow.name())).await;

    let error = runner
        .trigger_and_wait(run_id("a1"), &7_u64, ANSWER)
        .await
        .unwrap_err();

    assert!(
        matches!(&error, Error::RunExists { state, generation: 1, .. } if state == "succeeded"),
        "{error:?}"
    );
    run_event(&mut events, "a1", EventKind::RunDuplicate).await;
    assert_eq!(events.trail("a1"), ["run.duplicate"]);
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn waiting_on_a_workflow_no_runner_declared_fails_at_once() {
    let broker = TestBroker::new();
    // The exchange exists (a runner of another workflow declared it); this workflow does not.
    let runner = broker.start_runner(&chain("known")).await;
    let started = std::time::Instant::now();

    let error = runner
        .client()
        .trigger_and_wait(&"unknown".parse().unwrap(), run_id("u1"), &1_u64, ANSWER)
        .await
        .unwrap_err();

    assert!(matches!(error, Error::Unroutable { .. }), "{error:?}");
    assert!(
        started.elapsed() < ANSWER,
        "it did not wait for the timeout"
    );
    runner.shutdown().await.unwrap();
}

/// Many attempts publish on one channel at once, and the broker does not say which publish a
/// return is of: each run whose outcome matched no queue must still fail, once, and no routed
/// message (a `started` event) may count as returned.
#[tokio::test]
async fn unroutable_outcomes_of_many_runs_at_once_each_fail_their_own_run() {
    use futures_util::StreamExt;
    use inqubo_core::{FailureReason, RoutingKey};
    use lapin::types::FieldTable;
    use std::collections::HashMap;

    const RUNS: usize = 300;
    let broker = TestBroker::new();
    let flow = chain("orphans");
    let runner = broker.runner(&flow).prefetch(64).connect().await.unwrap();
    let (connection, channel) = broker.raw_channel().await;
    channel
        .queue_unbind(
            broker
                .topology()
                .step_queue(flow.name(), flow.step("second").unwrap().name())
                .as_str()
                .into(),
            broker.topology().exchange().into(),
            RoutingKey::step_input(flow.name(), flow.step("first").map(|s| s.name()))
                .as_str()
                .into(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = connection.close(200, "done".into()).await;
    // Not bound to `first.succeeded`: that would make every outcome routable.
    let keys = [
        RoutingKey::run_events(flow.name()),
        RoutingKey::step_event(
            flow.name(),
            flow.step("first").unwrap().name(),
            EventKind::Started,
        ),
    ];
    let client = runner.client();
    let mut stream = client
        .subscribe_to_all(keys.iter().map(RoutingKey::as_str))
        .await
        .unwrap();
    for index in 0..RUNS {
        client
            .trigger(flow.name(), run_id(format!("orphan-{index}")), &index)
            .await
            .unwrap();
    }

    let mut starts: HashMap<String, usize> = HashMap::new();
    let mut failures = HashMap::new();
    let collected = tokio::time::timeout(Duration::from_secs(60), async {
        while failures.len() < RUNS {
            let event = stream.next().await.unwrap().unwrap();
            let run = event.run_id.as_str().to_owned();
            match event.kind {
                EventKind::Started => *starts.entry(run).or_default() += 1,
                EventKind::RunFailed => {
                    let Some(RunOutcome::Failed(failure)) = RunOutcome::from_event(&event) else {
                        panic!("a run failed event that does not decode: {event:?}");
                    };
                    assert!(
                        failures.insert(run, failure).is_none(),
                        "a run failed twice"
                    );
                }
                _ => {}
            }
        }
    })
    .await;
    assert!(
        collected.is_ok(),
        "only {} of {RUNS} runs failed within a minute",
        failures.len()
    );
    for (run, failure) in &failures {
        assert_eq!(
            failure.reason,
            FailureReason::Unroutable,
            "{run}: {failure:?}"
        );
        assert_eq!(failure.step.as_str(), "first");
    }
    let restarted: Vec<_> = starts.iter().filter(|(_, count)| **count != 1).collect();
    assert!(
        restarted.is_empty(),
        "started events not published once: {restarted:?}"
    );
    runner.shutdown().await.unwrap();
}
