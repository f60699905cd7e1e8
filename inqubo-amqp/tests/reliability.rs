//! Faults against the real RabbitMQ: lost connections, crash loops, bad input, shutdown.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use inqubo_amqp::{Error, QueueType, Topology};
use inqubo_core::protocol::BROKER_DELIVERY_LIMIT;
use inqubo_core::{
    EventKind, FailedBody, FailureReason, Step, StepContext, StepError, Workflow, WorkflowName,
};
use inqubo_testkit::{Events, FlakyProxy, TestBroker, run_id};
use lapin::{
    BasicProperties,
    options::{BasicConsumeOptions, BasicNackOptions},
    types::{AMQPValue, FieldTable, LongString},
};
use serde_json::{Value, json};

async fn double(n: u64, _: StepContext) -> Result<u64, StepError> {
    Ok(n * 2)
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

fn parked_reason(delivery: &lapin::message::Delivery) -> String {
    match delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("parked-reason"))
    {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("parked-reason is {other:?}"),
    }
}

fn run_id_of(delivery: &lapin::message::Delivery) -> Option<String> {
    match delivery
        .properties
        .headers()
        .as_ref()?
        .inner()
        .get("run-id")?
    {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}

#[tokio::test]
async fn a_runner_reconnects_after_losing_its_connection_and_every_run_finishes() {
    let broker = TestBroker::new();
    let proxy = FlakyProxy::start(&broker).await;
    let flow = Workflow::builder("reconnect")
        .start(Step::new("first", double))
        .then(Step::new("second", double))
        .build()
        .unwrap();
    let runner = broker
        .runner(&flow)
        .url(proxy.url(&broker))
        .connect()
        .await
        .unwrap();
    let observer = broker.client().await;
    let mut events = Events::subscribe(&observer).await;

    for i in 0..10_u64 {
        observer
            .trigger(flow.name(), run_id(format!("before-{i}")), &i)
            .await
            .unwrap();
    }
    events
        .wait_for("before-0", "first", EventKind::Started)
        .await;
    proxy.cut();
    for i in 0..10_u64 {
        observer
            .trigger(flow.name(), run_id(format!("after-{i}")), &i)
            .await
            .unwrap();
    }

    for i in 0..10_u64 {
        for prefix in ["before", "after"] {
            let done = events
                .wait_for(&format!("{prefix}-{i}"), "second", EventKind::Succeeded)
                .await;
            assert_eq!(done.body, json!(i * 4));
        }
    }
    // The runner also triggers through its own, reconnected, client.
    runner.trigger(run_id("via-runner"), &5_u64).await.unwrap();
    let done = events
        .wait_for("via-runner", "second", EventKind::Succeeded)
        .await;
    assert_eq!(done.body, json!(20));
    runner.shutdown().await.unwrap();
}

/// A step that never finishes on input 13, as if it crashed its runner; the test cuts the
/// runner's connection every time it starts, which returns the input to its queue.
///
/// On classic queues the runner counts redeliveries by sending the message round again; if the
/// acknowledgement of the old copy is lost in a cut, both copies come back (a duplicate that
/// at-least-once allows), so only quorum queues promise the exact number of runs.
async fn crash_loop(broker: TestBroker, exact_runs: bool) {
    let proxy = FlakyProxy::start(&broker).await;
    let runs = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&runs);
    let flow = Workflow::builder("poison")
        .start(Step::new("hang", move |n: u64, _ctx: StepContext| {
            let counter = Arc::clone(&counter);
            async move {
                if n == 13 {
                    counter.fetch_add(1, Ordering::SeqCst);
                    std::future::pending::<()>().await;
                }
                Ok::<_, StepError>(n)
            }
        }))
        .build()
        .unwrap();
    let runner = broker
        .runner(&flow)
        .url(proxy.url(&broker))
        .max_redeliveries(2)
        .shutdown_timeout(Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    let observer = broker.client().await;
    let mut events = Events::subscribe(&observer).await;

    observer
        .trigger(flow.name(), run_id("poison-run"), &13_u64)
        .await
        .unwrap();
    // Once on the step's queue, then alone in the redelivered queue: three starts there (on
    // classic queues perhaps more, see above). Each start is cut, until the input is parked.
    let poison = |e: &inqubo_core::LifecycleEvent| e.run_id.as_str() == "poison-run";
    for started in 1.. {
        let seen = events
            .until(|seen| {
                seen.iter()
                    .any(|e| poison(e) && e.kind == EventKind::Failed)
                    || seen
                        .iter()
                        .filter(|e| poison(e) && e.kind == EventKind::Started)
                        .count()
                        >= started
            })
            .await;
        if seen
            .iter()
            .any(|e| poison(e) && e.kind == EventKind::Failed)
        {
            break;
        }
        proxy.cut();
    }
    let failed = events
        .wait_for("poison-run", "hang", EventKind::Failed)
        .await;
    let body: FailedBody = serde_json::from_value(failed.body).unwrap();
    assert_eq!(body.reason, FailureReason::RedeliveryLimit);
    let runs = runs.load(Ordering::SeqCst);
    if exact_runs {
        assert_eq!(
            runs, 4,
            "ran once on the step's queue, then three times alone: two redeliveries allowed"
        );
    } else {
        assert!((4..=12).contains(&runs), "ran {runs} times");
    }

    observer
        .trigger(flow.name(), run_id("healthy-run"), &1_u64)
        .await
        .unwrap();
    events
        .wait_for("healthy-run", "hang", EventKind::Succeeded)
        .await;
    let parked = broker
        .drain(&format!("{}.poison.parked", broker.prefix()), 1)
        .await;
    assert_eq!(parked_reason(&parked[0]), "redelivery_limit");
    assert_eq!(parked[0].data, b"13");
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_message_that_keeps_killing_its_runner_is_parked_on_quorum_queues() {
    crash_loop(TestBroker::new(), true).await;
}

#[tokio::test]
async fn a_message_that_keeps_killing_its_runner_is_parked_on_classic_queues() {
    crash_loop(TestBroker::with_queue_type(QueueType::Classic), false).await;
}

/// A runner holds one input that kills it (input 13: it never finishes, and the test cuts the
/// connection each time it starts) and a full prefetch of healthy neighbours it had not
/// started. Only the poison counts its redeliveries: it is parked, every neighbour runs.
#[tokio::test]
async fn a_crash_with_a_full_prefetch_parks_the_poison_and_no_neighbour() {
    const NEIGHBOURS: u64 = 9;
    let broker = TestBroker::new();
    let proxy = FlakyProxy::start(&broker).await;
    let flow = Workflow::builder("crowd")
        .start(Step::new("hang", |n: u64, _ctx: StepContext| async move {
            if n == 13 {
                std::future::pending::<()>().await;
            }
            Ok::<_, StepError>(n)
        }))
        .build()
        .unwrap();
    let runner = broker
        .runner(&flow)
        .url(proxy.url(&broker))
        .max_redeliveries(2)
        .max_in_flight(1)
        .prefetch(10)
        .shutdown_timeout(Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    let observer = broker.client().await;
    let mut events = Events::subscribe(&observer).await;
    let poison_starts = |seen: &[inqubo_core::LifecycleEvent]| {
        seen.iter()
            .filter(|e| e.kind == EventKind::Started && e.run_id.as_str() == "poison")
            .count()
    };

    observer
        .trigger(flow.name(), run_id("poison"), &13_u64)
        .await
        .unwrap();
    events.until(|seen| poison_starts(seen) >= 1).await;
    // The poison holds the runner's only slot: these wait in its prefetch, unstarted.
    for i in 0..NEIGHBOURS {
        observer
            .trigger(flow.name(), run_id(format!("n{i}")), &i)
            .await
            .unwrap();
    }
    for starts in 1..=4 {
        events.until(|seen| poison_starts(seen) >= starts).await;
        proxy.cut();
    }
    let failed = events.wait_for("poison", "hang", EventKind::Failed).await;
    let body: FailedBody = serde_json::from_value(failed.body).unwrap();
    assert_eq!(body.reason, FailureReason::RedeliveryLimit);
    for i in 0..NEIGHBOURS {
        let run = format!("n{i}");
        let done = events.wait_for(&run, "hang", EventKind::Succeeded).await;
        assert_eq!(done.body, json!(i));
    }
    assert!(
        !events
            .seen()
            .iter()
            .any(|e| e.kind == EventKind::Failed && e.run_id.as_str() != "poison"),
        "a neighbour failed"
    );
    let parked = broker
        .drain(&format!("{}.crowd.parked", broker.prefix()), 1)
        .await;
    assert_eq!(parked.len(), 1, "only the poison is parked");
    assert_eq!(parked_reason(&parked[0]), "redelivery_limit");
    assert_eq!(parked[0].data, b"13");
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_broker_parks_a_message_redelivered_past_its_delivery_limit() {
    let broker = TestBroker::new();
    let flow = Workflow::builder("net")
        .start(Step::new("s", double))
        .build()
        .unwrap();
    // Declare the topology without a runner, then play a runner that dies every time.
    let topology: Topology = broker.topology();
    let (connection, channel) = broker.raw_channel().await;
    let _register_for_cleanup = broker.runner(&flow);
    topology.declare_shared(&channel).await.unwrap();
    topology
        .declare_workflow(&channel, &flow, inqubo_core::protocol::JOIN_SHARDS)
        .await
        .unwrap();
    let mut headers = FieldTable::default();
    headers.insert("run-id".into(), text("doomed"));
    broker
        .publish_raw(
            "net.run.triggered",
            BasicProperties::default().with_headers(headers),
            b"1",
        )
        .await;
    let mut consumer = channel
        .basic_consume(
            topology
                .step_queue(flow.name(), flow.steps()[0].name())
                .as_str()
                .into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    use futures_util::StreamExt;
    for _ in 0..=BROKER_DELIVERY_LIMIT {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("a delivery")
            .unwrap()
            .unwrap();
        delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let parked = broker
        .drain(topology.parked_queue(flow.name()).as_str(), 1)
        .await;
    assert_eq!(run_id_of(&parked[0]).as_deref(), Some("doomed"));
    assert_eq!(parked[0].data, b"1");
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test]
async fn bad_input_of_every_kind_is_parked_with_its_reason_while_good_runs_finish() {
    let broker = TestBroker::new();
    let flow = Workflow::builder("picky")
        .start(Step::new("s", double))
        .build()
        .unwrap();
    let runner = broker
        .runner(&flow)
        .max_input_bytes(1024 * 1024)
        .connect()
        .await
        .unwrap();
    // Bound to this workflow only: a watcher bound to `#` would make any trigger routable.
    let mut events = Events::subscribe_to(runner.client(), Some(runner.workflow().name())).await;
    let props = |entries: &[(&str, AMQPValue)]| {
        let mut headers = FieldTable::default();
        for (name, value) in entries {
            headers.insert((*name).into(), value.clone());
        }
        BasicProperties::default().with_headers(headers)
    };
    let huge = vec![b'7'; 50 * 1024 * 1024];
    let cases: Vec<(&str, BasicProperties, Vec<u8>, &str)> = vec![
        (
            "not-json",
            props(&[("run-id", text("not-json"))]),
            b"{oops".to_vec(),
            "undecodable",
        ),
        (
            "wrong-shape",
            props(&[("run-id", text("wrong-shape"))]),
            br#"{"n":1}"#.to_vec(),
            "undecodable",
        ),
        (
            "non-utf8",
            props(&[("run-id", text("non-utf8"))]),
            vec![0xff, 0xfe, 0x00],
            "undecodable",
        ),
        (
            "empty-body",
            props(&[("run-id", text("empty-body"))]),
            Vec::new(),
            "undecodable",
        ),
        (
            "huge",
            props(&[("run-id", text("huge"))]),
            huge,
            "too_large",
        ),
        (
            "attempt-is-text",
            props(&[
                ("run-id", text("attempt-is-text")),
                ("retry-attempt", text("two")),
            ]),
            b"1".to_vec(),
            "undecodable",
        ),
        ("<missing run-id>", props(&[]), b"1".to_vec(), "undecodable"),
        (
            "<empty run-id>",
            props(&[("run-id", text(""))]),
            b"1".to_vec(),
            "undecodable",
        ),
        (
            "<run-id is a number>",
            props(&[("run-id", AMQPValue::LongLongInt(42))]),
            b"1".to_vec(),
            "undecodable",
        ),
        (
            "<run-id not utf-8>",
            props(&[(
                "run-id",
                AMQPValue::LongString(LongString::from(vec![0xc3, 0x28])),
            )]),
            b"1".to_vec(),
            "undecodable",
        ),
        (
            // Headers near the frame size (128 KiB): whatever the runner adds to park it must
            // still fit.
            "huge-header",
            props(&[
                ("run-id", text("huge-header")),
                ("x-pad", text(&"p".repeat(130_900))),
            ]),
            b"{oops".to_vec(),
            "undecodable",
        ),
        (
            "<run-id is a table>",
            props(&[("run-id", AMQPValue::FieldTable(FieldTable::default()))]),
            b"1".to_vec(),
            "undecodable",
        ),
    ];
    for (_, properties, body, _) in &cases {
        broker
            .publish_raw("picky.run.triggered", properties.clone(), body)
            .await;
    }
    // Valid, at the limits: they run. A run id of the 255 bytes the protocol allows (ids
    // built from it are longer, and are cut to fit), a header nested 40 deep that Inqubo
    // does not read, a `traceparent` of 1,000 bytes, and a `retry-attempt` of a type Inqubo
    // never writes (a float), which reads as absent: the first attempt.
    let longest = "r".repeat(255);
    let mut nested = AMQPValue::LongString(LongString::from("deep"));
    for depth in 0..40 {
        let mut table = FieldTable::default();
        table.insert(format!("level-{depth}").into(), nested);
        nested = AMQPValue::FieldArray(vec![AMQPValue::FieldTable(table)].into());
    }
    let runs_anyway: Vec<(String, BasicProperties)> = vec![
        (longest.clone(), props(&[("run-id", text(&longest))])),
        (
            "nested-junk".into(),
            props(&[("run-id", text("nested-junk")), ("x-junk", nested)]),
        ),
        (
            "huge-header-runs".into(),
            props(&[
                ("run-id", text("huge-header-runs")),
                ("x-pad", text(&"p".repeat(130_800))),
            ]),
        ),
        (
            "attempt-is-fractional".into(),
            props(&[
                ("run-id", text("attempt-is-fractional")),
                ("retry-attempt", AMQPValue::Double(2.5)),
            ]),
        ),
        (
            "long-trace".into(),
            props(&[
                ("run-id", text("long-trace")),
                ("traceparent", text(&"t".repeat(1000))),
            ]),
        ),
    ];
    for (_, properties) in &runs_anyway {
        broker
            .publish_raw("picky.run.triggered", properties.clone(), b"4")
            .await;
    }
    runner.trigger(run_id("good"), &21_u64).await.unwrap();
    let unknown = runner
        .client()
        .trigger(&WorkflowName::new("nobody").unwrap(), run_id("r"), &1)
        .await
        .unwrap_err();
    assert!(matches!(unknown, Error::Unroutable { .. }), "{unknown:?}");

    let good = events.wait_for("good", "s", EventKind::Succeeded).await;
    assert_eq!(good.body, json!(42));
    for (run, _, _, reason) in cases.iter().filter(|c| !c.0.starts_with('<')) {
        let failed = events.wait_for(run, "s", EventKind::Failed).await;
        assert_eq!(failed.body["reason"], Value::from(*reason), "{run}");
    }
    let parked = broker
        .drain(&format!("{}.picky.parked", broker.prefix()), cases.len())
        .await;
    assert_eq!(parked.len(), cases.len());
    for (run, _, body, reason) in &cases {
        let message = parked
            .iter()
            .find(|m| match run_id_of(m) {
                Some(id) => id == *run,
                None => m.data == *body && parked_reason(m) == *reason,
            })
            .unwrap_or_else(|| panic!("{run} was not parked"));
        assert_eq!(parked_reason(message), *reason, "{run}");
        assert_eq!(message.data.len(), body.len(), "{run} keeps its body");
    }
    for (run, _) in &runs_anyway {
        let done = events.wait_for(run, "s", EventKind::Succeeded).await;
        assert_eq!(done.body, json!(8), "{run}");
    }
    runner.shutdown().await.unwrap();
    // Nothing left behind: a delivery still unacknowledged at shutdown would be back here.
    let topology = broker.topology();
    for queue in [
        topology.step_queue(flow.name(), flow.steps()[0].name()),
        topology.redelivered_queue(flow.name()),
    ] {
        assert_eq!(broker.ready_messages(queue.as_str()).await, 0, "{queue:?}");
    }
}

#[tokio::test]
async fn shutdown_lets_the_attempt_in_flight_finish_and_publish() {
    let broker = TestBroker::new();
    let flow = Workflow::builder("graceful")
        .start(Step::new("slow", |n: u64, _ctx: StepContext| async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok::<_, StepError>(n + 1)
        }))
        .build()
        .unwrap();
    let runner = broker.start_runner(&flow).await;
    let observer = broker.client().await;
    let mut events = Events::subscribe(&observer).await;

    runner.trigger(run_id("in-flight"), &1_u64).await.unwrap();
    events
        .wait_for("in-flight", "slow", EventKind::Started)
        .await;
    runner.shutdown().await.unwrap();

    let done = events
        .wait_for("in-flight", "slow", EventKind::Succeeded)
        .await;
    assert_eq!(done.body, json!(2));
}

/// Inputs a runner had fetched but not started when it shut down go back as they came: not
/// marked as redelivered, so nothing takes them for inputs that crashed their runner.
#[tokio::test]
async fn shutdown_returns_fetched_unstarted_inputs_unmarked() {
    let broker = TestBroker::new();
    let flow = Workflow::builder("queued")
        .unique_runs(false)
        .start(Step::new("slow", |n: u64, _ctx: StepContext| async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, StepError>(n)
        }))
        .build()
        .unwrap();
    let runner = broker
        .runner(&flow)
        .max_in_flight(1)
        .prefetch(10)
        .connect()
        .await
        .unwrap();
    let observer = broker.client().await;
    let mut events = Events::subscribe(&observer).await;
    for i in 0..5_u64 {
        observer
            .trigger(flow.name(), run_id(format!("q{i}")), &i)
            .await
            .unwrap();
    }
    let seen = events
        .until(|seen| seen.iter().any(|e| e.kind == EventKind::Started))
        .await;
    let first = seen
        .iter()
        .find(|e| e.kind == EventKind::Started)
        .unwrap()
        .run_id
        .clone();
    runner.shutdown().await.unwrap();
    events
        .wait_for(first.as_str(), "slow", EventKind::Succeeded)
        .await;

    let queue = broker
        .topology()
        .step_queue(flow.name(), flow.steps()[0].name());
    let left = broker.drain(queue.as_str(), 4).await;
    assert_eq!(left.len(), 4, "the four unstarted inputs are back");
    for delivery in &left {
        let count = delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-delivery-count").cloned());
        assert!(!delivery.redelivered, "{delivery:?}");
        assert!(
            matches!(
                count,
                None | Some(AMQPValue::LongLongInt(0) | AMQPValue::LongInt(0))
            ),
            "{count:?}"
        );
    }
}

#[tokio::test]
async fn a_panicking_step_is_retried_and_the_runner_survives() {
    let broker = TestBroker::new();
    let flow = Workflow::builder("panicky")
        .start(
            Step::new("p", |n: u64, ctx: StepContext| async move {
                if ctx.attempt == 1 {
                    panic!("first attempt explodes");
                }
                Ok::<_, StepError>(n)
            })
            .retry(inqubo_core::RetryPolicy::limited(
                1,
                Duration::from_millis(100),
            )),
        )
        .build()
        .unwrap();
    let runner = broker.start_runner(&flow).await;
    let mut events = Events::subscribe(runner.client()).await;

    runner.trigger(run_id("boom"), &8_u64).await.unwrap();
    let retrying = events.wait_for("boom", "p", EventKind::Retrying).await;
    let done = events.wait_for("boom", "p", EventKind::Succeeded).await;

    assert_eq!(
        retrying.body["error"],
        json!("step panicked: first attempt explodes")
    );
    assert_eq!(done.attempt, Some(2));
    runner.shutdown().await.unwrap();
}
