//! The AMQP runtime against the real RabbitMQ: each test under a prefix of its own.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use inqubo_amqp::{Error, QueueType};
use inqubo_core::{
    EventKind, FailedBody, FailureReason, RetryPolicy, RetryingBody, Step, StepContext, StepError,
    Workflow, WorkflowName,
};
use inqubo_testkit::{Events, TestBroker, run_id};
use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString},
};
use serde_json::{Value, json};

async fn get_data(_: Value, _: StepContext) -> Result<Vec<u32>, StepError> {
    Ok(vec![1, 2, 3])
}

async fn sum(values: Vec<u32>, _: StepContext) -> Result<u32, StepError> {
    Ok(values.iter().sum())
}

async fn count(values: Vec<u32>, _: StepContext) -> Result<usize, StepError> {
    Ok(values.len())
}

fn header<'a>(delivery: &'a lapin::message::Delivery, name: &str) -> Option<&'a AMQPValue> {
    delivery.properties.headers().as_ref()?.inner().get(name)
}

fn text_header(delivery: &lapin::message::Delivery, name: &str) -> String {
    match header(delivery, name) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("header {name} is {other:?}"),
    }
}

#[tokio::test]
async fn full_run_publishes_every_lifecycle_event_in_order() {
    let broker = TestBroker::new();
    let flow = Workflow::builder("chain")
        .start(Step::new("get_data", get_data))
        .then(Step::new("sum", sum))
        .build()
        .unwrap();
    let runner = broker.start_runner(&flow).await;
    let mut events = Events::subscribe(runner.client()).await;

    runner.trigger(run_id("run-1"), &json!({})).await.unwrap();
    let done = events.wait_for("run-1", "sum", EventKind::Succeeded).await;

    assert_eq!(done.body, json!(6));
    assert_eq!(done.attempt, Some(1));
    assert_eq!(
        events.trail("run-1"),
        [
            "get_data.started",
            "get_data.succeeded",
            "sum.started",
            "sum.succeeded"
        ]
    );
    let parent = events
        .seen()
        .iter()
        .find(|e| e.kind == EventKind::Succeeded && e.step.as_ref().unwrap().as_str() == "get_data")
        .unwrap();
    assert_eq!(parent.body, json!([1, 2, 3]));
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn fan_out_runs_every_child_on_the_parent_output() {
    let broker = TestBroker::new();
    let flow = Workflow::builder("fan")
        .start(Step::new("get_data", get_data))
        .then((Step::new("sum", sum), Step::new("count", count)))
        .build()
        .unwrap();
    let runner = broker.start_runner(&flow).await;
    let mut events = Events::subscribe(runner.client()).await;

    runner
        .trigger(run_id("run-fan"), &json!(null))
        .await
        .unwrap();
    let total = events
        .wait_for("run-fan", "sum", EventKind::Succeeded)
        .await;
    let length = events
        .wait_for("run-fan", "count", EventKind::Succeeded)
        .await;

    assert_eq!(total.body, json!(6));
    assert_eq!(length.body, json!(3));
    runner.shutdown().await.unwrap();
}

async fn flaky(fail_times: u32, ctx: StepContext) -> Result<u32, StepError> {
    if ctx.attempt <= fail_times {
        return Err(StepError::retryable(format!(
            "attempt {} fails on purpose",
            ctx.attempt
        )));
    }
    Ok(ctx.attempt)
}

#[tokio::test]
async fn retry_goes_through_the_broker_then_succeeds() {
    let broker = TestBroker::new();
    let flow = Workflow::builder("retry")
        .start(Step::new("flaky", flaky).retry(RetryPolicy::limited(3, Duration::from_millis(200))))
        .build()
        .unwrap();
    let runner = broker.start_runner(&flow).await;
    let mut events = Events::subscribe(runner.client()).await;

    runner.trigger(run_id("r"), &2).await.unwrap();
    let done = events.wait_for("r", "flaky", EventKind::Succeeded).await;

    assert_eq!(done.body, json!(3));
    assert_eq!(done.attempt, Some(3));
    assert_eq!(
        events.trail("r"),
        [
            "flaky.started",
            "flaky.retrying",
            "flaky.started",
            "flaky.retrying",
            "flaky.started",
            "flaky.succeeded"
        ]
    );
    let retries: Vec<RetryingBody> = events
        .seen()
        .iter()
        .filter(|e| e.kind == EventKind::Retrying)
        .map(|e| serde_json::from_value(e.body.clone()).unwrap())
        .collect();
    assert_eq!(retries[0].attempt, 1);
    assert_eq!(retries[0].next_attempt, 2);
    assert_eq!(retries[0].delay_ms, 200);
    assert_eq!(retries[1].error, "attempt 2 fails on purpose");
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn fatal_error_fails_at_once_and_parks_the_input() {
    async fn refuse(_: Value, _: StepContext) -> Result<(), StepError> {
        Err(StepError::fatal("input is not acceptable"))
    }
    let broker = TestBroker::new();
    let flow = Workflow::builder("fatal")
        .start(Step::new("refuse", refuse))
        .build()
        .unwrap();
    let runner = broker.start_runner(&flow).await;
    let mut events = Events::subscribe(runner.client()).await;

    runner
        .trigger(run_id("f"), &json!({"order": 7}))
        .await
        .unwrap();
    let failed = events.wait_for("f", "refuse", EventKind::Failed).await;

    let body: FailedBody = serde_json::from_value(failed.body).unwrap();
    assert_eq!(body.reason, FailureReason::Fatal);
    assert_eq!(body.attempt, 1);
    assert_eq!(body.error, "input is not acceptable");
    assert!(!events.trail("f").contains(&"refuse.retrying".to_owned()));
    let parked = broker
        .drain(&format!("{}.fatal.parked", broker.prefix()), 1)
        .await;
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].data, br#"{"order":7}"#);
    assert_eq!(text_header(&parked[0], "parked-reason"), "fatal");
    assert_eq!(text_header(&parked[0], "parked-step"), "refuse");
    assert_eq!(text_header(&parked[0], "run-id"), "f");
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_error_past_the_header_limit_is_parked_cut_and_the_runner_keeps_serving() {
    async fn verbose(n: u32, _: StepContext) -> Result<u32, StepError> {
        if n == 0 {
            // Past the broker's frame size (128 KiB): whole, it could not travel as a header.
            return Err(StepError::fatal("x".repeat(300_000)));
        }
        Ok(n)
    }
    let broker = TestBroker::new();
    let flow = Workflow::builder("verbose")
        .start(Step::new("verbose", verbose))
        .build()
        .unwrap();
    let runner = broker.start_runner(&flow).await;
    let mut events = Events::subscribe(runner.client()).await;

    runner.trigger(run_id("long"), &0_u32).await.unwrap();
    let failed = events.wait_for("long", "verbose", EventKind::Failed).await;
    let body: FailedBody = serde_json::from_value(failed.body).unwrap();
    assert_eq!(
        body.error.len(),
        300_000,
        "the event's body has the whole text"
    );
    let parked = broker
        .drain(&format!("{}.verbose.parked", broker.prefix()), 1)
        .await;
    let error = text_header(&parked[0], "parked-error");
    assert!(error.len() <= 4096, "{}", error.len());
    assert!(error.ends_with("[cut: 300000 bytes in all]"), "{error}");
    // The connection survived: the next run goes through.
    let outcome = runner
        .trigger_and_wait(run_id("next"), &5_u32, std::time::Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        inqubo_amqp::RunOutcome::Succeeded(json!({"verbose": 5}))
    );
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_output_too_large_to_pass_on_is_parked_and_its_child_never_runs() {
    async fn swell(n: u32, _: StepContext) -> Result<String, StepError> {
        Ok("x".repeat(n as usize))
    }
    async fn measure(text: String, _: StepContext) -> Result<usize, StepError> {
        Ok(text.len())
    }
    let broker = TestBroker::new();
    let flow = Workflow::builder("swell")
        .start(Step::new("swell", swell))
        .then(Step::new("measure", measure))
        .build()
        .unwrap();
    let runner = broker
        .runner(&flow)
        .max_input_bytes(64 * 1024)
        .connect()
        .await
        .unwrap();
    let mut events = Events::subscribe(runner.client()).await;

    runner.trigger(run_id("big"), &100_000_u32).await.unwrap();
    let failed = events.wait_for("big", "swell", EventKind::Failed).await;
    let body: FailedBody = serde_json::from_value(failed.body).unwrap();
    assert_eq!(body.reason, FailureReason::TooLarge);
    assert!(
        body.error.contains("output is 100002 bytes"),
        "{}",
        body.error
    );
    let parked = broker
        .drain(&format!("{}.swell.parked", broker.prefix()), 1)
        .await;
    assert_eq!(text_header(&parked[0], "parked-reason"), "too_large");
    assert!(
        !events.trail("big").iter().any(|e| e.contains("succeeded")),
        "{:?}",
        events.trail("big")
    );
    // The same step with a smaller output passes it on.
    let outcome = runner
        .trigger_and_wait(run_id("small"), &10_u32, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        inqubo_amqp::RunOutcome::Succeeded(json!({"measure": 10}))
    );
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn exhausted_retries_park_message_with_reason() {
    let broker = TestBroker::new();
    let flow = Workflow::builder("exhaust")
        .start(Step::new("flaky", flaky).retry(RetryPolicy::limited(1, Duration::from_millis(100))))
        .build()
        .unwrap();
    let runner = broker.start_runner(&flow).await;
    let mut events = Events::subscribe(runner.client()).await;

    runner.trigger(run_id("x"), &99).await.unwrap();
    let failed = events.wait_for("x", "flaky", EventKind::Failed).await;

    let body: FailedBody = serde_json::from_value(failed.body).unwrap();
    assert_eq!(body.reason, FailureReason::RetriesExhausted);
    assert_eq!(body.attempt, 2);
    let parked = broker
        .drain(&format!("{}.exhaust.parked", broker.prefix()), 1)
        .await;
    assert_eq!(
        text_header(&parked[0], "parked-reason"),
        "retries_exhausted"
    );
    assert_eq!(
        text_header(&parked[0], "parked-error"),
        "attempt 2 fails on purpose"
    );
    assert_eq!(parked[0].data, b"99");
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn undecodable_messages_are_parked_with_reason_and_the_runner_keeps_serving() {
    let broker = TestBroker::new();
    let flow = Workflow::builder("strict")
        .start(Step::new("sum", sum))
        .build()
        .unwrap();
    let runner = broker.start_runner(&flow).await;
    let mut events = Events::subscribe(runner.client()).await;
    let with_run_id = |id: &str| {
        let mut headers = FieldTable::default();
        headers.insert("run-id".into(), AMQPValue::LongString(LongString::from(id)));
        BasicProperties::default().with_headers(headers)
    };

    broker
        .publish_raw(
            "strict.run.triggered",
            with_run_id("bad-json"),
            b"{not json",
        )
        .await;
    broker
        .publish_raw(
            "strict.run.triggered",
            with_run_id("wrong-shape"),
            br#"{"a":1}"#,
        )
        .await;
    broker
        .publish_raw("strict.run.triggered", BasicProperties::default(), b"[1]")
        .await;
    runner.trigger(run_id("good"), &[4, 5]).await.unwrap();

    let good = events.wait_for("good", "sum", EventKind::Succeeded).await;
    assert_eq!(good.body, json!(9));
    for run in ["bad-json", "wrong-shape"] {
        let failed = events.wait_for(run, "sum", EventKind::Failed).await;
        let body: FailedBody = serde_json::from_value(failed.body).unwrap();
        assert_eq!(body.reason, FailureReason::Undecodable, "{run}");
    }
    let parked = broker
        .drain(&format!("{}.strict.parked", broker.prefix()), 3)
        .await;
    assert_eq!(parked.len(), 3);
    assert!(
        parked
            .iter()
            .all(|m| text_header(m, "parked-reason") == "undecodable")
    );
    let no_run_id = parked
        .iter()
        .find(|m| header(m, "run-id").is_none())
        .expect("the message without run-id is parked");
    assert_eq!(
        text_header(no_run_id, "parked-error"),
        "missing `run-id` header"
    );
    assert_eq!(no_run_id.data, b"[1]");
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn two_runners_share_the_work_of_one_workflow() {
    let broker = TestBroker::new();
    let counters = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let flow_counting = |counter: Arc<AtomicUsize>| {
        Workflow::builder("shared")
            .start(Step::new("work", move |n: u32, _ctx: StepContext| {
                let counter = Arc::clone(&counter);
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    // Simulated work, so that one runner cannot drain the queue alone.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok::<_, StepError>(n)
                }
            }))
            .build()
            .unwrap()
    };
    let first = broker
        .runner(&flow_counting(Arc::clone(&counters[0])))
        .prefetch(2)
        .connect()
        .await
        .unwrap();
    let second = broker
        .runner(&flow_counting(Arc::clone(&counters[1])))
        .prefetch(2)
        .connect()
        .await
        .unwrap();
    let mut events = Events::subscribe(first.client()).await;

    const RUNS: usize = 40;
    for i in 0..RUNS {
        first.trigger(run_id(format!("run-{i}")), &i).await.unwrap();
    }
    events
        .until(|seen| {
            seen.iter()
                .filter(|e| e.kind == EventKind::Succeeded)
                .count()
                == RUNS
        })
        .await;

    let done = [
        counters[0].load(Ordering::SeqCst),
        counters[1].load(Ordering::SeqCst),
    ];
    assert_eq!(done[0] + done[1], RUNS, "{done:?}");
    assert!(
        done[0] > 0 && done[1] > 0,
        "both runners should work: {done:?}"
    );
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
}

/// Retries after a delay named in the input: the retry policy sees only the error, so the
/// step puts the delay in its error message.
#[derive(Debug)]
struct DelayFromError;

impl inqubo_core::RetryStrategy for DelayFromError {
    fn next_delay(&self, attempt: u32, error: &StepError) -> Option<Duration> {
        let ms: u64 = error.message().parse().ok()?;
        (attempt == 1).then(|| Duration::from_millis(ms))
    }
    fn spec(&self) -> inqubo_core::RetrySpec {
        inqubo_core::RetrySpec::custom("delay named by the error")
    }
}

#[tokio::test]
async fn a_short_retry_is_not_held_back_by_a_long_one() {
    async fn wait_then_pass(delay_ms: u64, ctx: StepContext) -> Result<u64, StepError> {
        if ctx.attempt == 1 {
            return Err(StepError::retryable(delay_ms.to_string()));
        }
        Ok(delay_ms)
    }
    let broker = TestBroker::new();
    let flow = Workflow::builder("hol")
        .start(Step::new("s", wait_then_pass).retry(RetryPolicy::custom(DelayFromError)))
        .build()
        .unwrap();
    let runner = broker.start_runner(&flow).await;
    let mut events = Events::subscribe(runner.client()).await;

    runner.trigger(run_id("long"), &300_000_u64).await.unwrap();
    events.wait_for("long", "s", EventKind::Retrying).await;
    runner.trigger(run_id("short"), &300_u64).await.unwrap();
    let short = events.wait_for("short", "s", EventKind::Succeeded).await;

    assert_eq!(short.attempt, Some(2));
    assert!(
        !events.trail("long").contains(&"s.succeeded".to_owned()),
        "the 5-minute retry cannot have run yet"
    );
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn triggering_a_workflow_nobody_runs_is_an_unroutable_error() {
    let broker = TestBroker::new();
    let flow = Workflow::builder("present")
        .start(Step::new("sum", sum))
        .build()
        .unwrap();
    let runner = broker.start_runner(&flow).await;
    // Watchers of every workflow and of the absent one: neither makes its trigger routable.
    let _everything = Events::subscribe(runner.client()).await;
    let _absent =
        Events::subscribe_to(runner.client(), Some(&WorkflowName::new("absent").unwrap())).await;

    let error = runner
        .client()
        .trigger(
            &WorkflowName::new("absent").unwrap(),
            run_id("r"),
            &json!({}),
        )
        .await
        .unwrap_err();

    assert!(
        matches!(&error, Error::Unroutable { routing_key, .. } if routing_key == "absent.run.triggered"),
        "{error:?}"
    );
    assert!(!error.is_transient());
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn classic_queues_run_workflows_too() {
    let broker = TestBroker::with_queue_type(QueueType::Classic);
    let flow = Workflow::builder("classic")
        .start(Step::new("flaky", flaky).retry(RetryPolicy::limited(1, Duration::from_millis(100))))
        .build()
        .unwrap();
    let runner = broker.start_runner(&flow).await;
    let mut events = Events::subscribe(runner.client()).await;

    runner.trigger(run_id("c"), &1).await.unwrap();
    let done = events.wait_for("c", "flaky", EventKind::Succeeded).await;

    assert_eq!(done.attempt, Some(2));
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn redeclaring_with_another_queue_type_is_a_topology_mismatch() {
    let broker = TestBroker::new();
    let flow = Workflow::builder("mismatch")
        .start(Step::new("sum", sum))
        .build()
        .unwrap();
    let runner = broker.start_runner(&flow).await;

    let error = broker
        .runner(&flow)
        .queue_type(QueueType::Classic)
        .connect()
        .await
        .unwrap_err();

    assert!(matches!(error, Error::TopologyMismatch { .. }), "{error:?}");
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn started_events_can_be_turned_off_without_losing_outcomes() {
    let broker = TestBroker::new();
    let flow = Workflow::builder("quiet")
        .start(Step::new("get_data", get_data))
        .then(Step::new("sum", sum))
        .build()
        .unwrap();
    let runner = broker
        .runner(&flow)
        .publish_started(false)
        .connect()
        .await
        .unwrap();
    let mut events = Events::subscribe(runner.client()).await;

    runner.trigger(run_id("q"), &json!({})).await.unwrap();
    events.wait_for("q", "sum", EventKind::Succeeded).await;

    assert_eq!(events.trail("q"), ["get_data.succeeded", "sum.succeeded"]);
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_outcome_no_queue_receives_fails_the_step_once_and_parks_its_input() {
    let broker = TestBroker::new();
    let flow = Workflow::builder("orphan")
        .start(Step::new("get_data", get_data))
        .then(Step::new("sum", sum))
        .build()
        .unwrap();
    let runner = broker.start_runner(&flow).await;
    // Watch failures only: a watcher bound to `succeeded` keys would make the outcome routable.
    let mut failures = runner
        .client()
        .subscribe_to("orphan.step.*.failed")
        .await
        .unwrap();
    // Cut the child's queue off its parent's `succeeded` key, as if it had been removed.
    let (connection, channel) = broker.raw_channel().await;
    channel
        .queue_unbind(
            format!("{}.orphan.sum", broker.prefix()).as_str().into(),
            broker.prefix().into(),
            "orphan.step.get_data.succeeded".into(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = connection.close(200, "done".into()).await;

    let outcome = runner
        .trigger_and_wait(run_id("o"), &json!({}), Duration::from_secs(30))
        .await
        .unwrap();
    // The run's end comes after the step's `failed`; one more confirmed run flushes the stream.
    runner
        .trigger_and_wait(run_id("o2"), &json!({}), Duration::from_secs(30))
        .await
        .unwrap();
    let mut failed = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(
        Duration::from_millis(500),
        futures_util::StreamExt::next(&mut failures),
    )
    .await
    {
        failed.push(event.unwrap());
    }

    let inqubo_amqp::RunOutcome::Failed(failure) = outcome else {
        panic!("expected a failed run, got {outcome:?}");
    };
    assert_eq!(failure.reason, FailureReason::Unroutable);
    assert_eq!(failure.step.as_str(), "get_data");
    let of_o: Vec<_> = failed.iter().filter(|e| e.run_id.as_str() == "o").collect();
    assert_eq!(of_o.len(), 1, "one failed event, not two: {failed:?}");
    let body: FailedBody = serde_json::from_value(of_o[0].body.clone()).unwrap();
    assert_eq!(body.reason, FailureReason::Unroutable);
    let parked = broker
        .drain(&format!("{}.orphan.parked", broker.prefix()), 1)
        .await;
    assert_eq!(text_header(&parked[0], "parked-reason"), "unroutable");
    runner.shutdown().await.unwrap();
}

/// A step limited to 2 attempts at once per runner never runs 3, though the runner could,
/// and does run 2.
#[tokio::test]
async fn a_step_limited_per_runner_runs_no_more_attempts_at_once() {
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (now, peak) = (Arc::clone(&running), Arc::clone(&most));
    let flow = Workflow::builder("pooled")
        .unique_runs(false)
        .start(
            Step::new("pool", move |n: u64, _ctx: StepContext| {
                let (now, peak) = (Arc::clone(&now), Arc::clone(&peak));
                async move {
                    let at_once = now.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(at_once, Ordering::SeqCst);
                    // Long enough for the others to start, were they allowed to.
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, StepError>(n)
                }
            })
            .concurrency(2),
        )
        .build()
        .unwrap();
    let broker = TestBroker::new();
    let runner = broker.start_runner(&flow).await;
    let mut events = Events::subscribe(runner.client()).await;
    for i in 0..6_u64 {
        runner.trigger(run_id(format!("p{i}")), &i).await.unwrap();
    }
    for i in 0..6 {
        events
            .wait_for(&format!("p{i}"), "pool", EventKind::Succeeded)
            .await;
    }
    assert_eq!(most.load(Ordering::SeqCst), 2);
    runner.shutdown().await.unwrap();
}

/// A step limited to 3 attempts at once across the fleet never runs 4, with 4 runners that
/// could run dozens, measured by the steps themselves; and its work still gets done.
#[tokio::test(flavor = "multi_thread")]
async fn a_step_limited_across_the_fleet_never_runs_more_at_once_with_four_runners() {
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (now, peak) = (Arc::clone(&running), Arc::clone(&most));
    let flow = Workflow::builder("partner")
        .unique_runs(false)
        .start(
            Step::new("call", move |n: u64, _ctx: StepContext| {
                let (now, peak) = (Arc::clone(&now), Arc::clone(&peak));
                async move {
                    let at_once = now.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(at_once, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, StepError>(n)
                }
            })
            .fleet_concurrency(3),
        )
        .build()
        .unwrap();
    let broker = TestBroker::new();
    let mut runners = Vec::new();
    for _ in 0..4 {
        runners.push(broker.start_runner(&flow).await);
    }
    let observer = broker.client().await;
    let mut events = Events::subscribe(&observer).await;
    for i in 0..20_u64 {
        observer
            .trigger(flow.name(), run_id(format!("f{i}")), &i)
            .await
            .unwrap();
    }
    for i in 0..20 {
        events
            .wait_for(&format!("f{i}"), "call", EventKind::Succeeded)
            .await;
    }
    assert_eq!(most.load(Ordering::SeqCst), 3, "three at once, never four");
    for runner in runners {
        runner.shutdown().await.unwrap();
    }
}

/// A step limited to 50 starts a second across the fleet, with two runners and a backlog,
/// starts 500 ± 5 % of them in 10 s, measured by the steps themselves.
#[tokio::test(flavor = "multi_thread")]
async fn a_step_limited_to_a_rate_across_the_fleet_keeps_it() {
    let starts = Arc::new(std::sync::Mutex::new(Vec::<std::time::Instant>::new()));
    let seen = Arc::clone(&starts);
    let flow = Workflow::builder("metered")
        .unique_runs(false)
        .start(
            Step::new("call", move |n: u64, _ctx: StepContext| {
                seen.lock().unwrap().push(std::time::Instant::now());
                async move { Ok::<_, StepError>(n) }
            })
            .fleet_rate(50),
        )
        .build()
        .unwrap();
    let broker = TestBroker::new();
    let runners = [
        broker.start_runner(&flow).await,
        broker.start_runner(&flow).await,
    ];
    let observer = broker.client().await;
    let mut events = Events::subscribe(&observer).await;
    for i in 0..700_u64 {
        observer
            .trigger(flow.name(), run_id(format!("m{i}")), &i)
            .await
            .unwrap();
    }
    events
        .until(|seen| {
            seen.iter()
                .filter(|e| e.kind == EventKind::Succeeded)
                .count()
                >= 560
        })
        .await;
    let starts = starts.lock().unwrap().clone();
    let first = starts[0];
    let in_ten_seconds = starts
        .iter()
        .filter(|at| at.duration_since(first) < Duration::from_secs(10))
        .count();
    assert!(
        (475..=525).contains(&in_ten_seconds),
        "{in_ten_seconds} starts in 10 s at 50/s"
    );
    for runner in runners {
        runner.shutdown().await.unwrap();
    }
}
