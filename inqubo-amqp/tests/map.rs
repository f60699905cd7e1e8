//! Maps against the real RabbitMQ: elements shared by runners, and an element delivered twice.
//! (The scenarios both backends share are in `inqubo/tests/behaviour.rs`.)

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use inqubo_amqp::RunOutcome;
use inqubo_core::{
    EventKind, Step, StepContext, StepError, Workflow,
    protocol::{Names, header},
};
use inqubo_testkit::{Events, TestBroker, run_id};
use lapin::{
    BasicProperties,
    options::BasicPublishOptions,
    types::{AMQPValue, FieldTable, LongString},
};
use serde_json::json;
use tokio::sync::Notify;

const WAIT: Duration = Duration::from_secs(30);

async fn list(n: u64, _: StepContext) -> Result<Vec<u64>, StepError> {
    Ok((0..n).collect())
}

async fn collect(results: Vec<u64>, _: StepContext) -> Result<Vec<u64>, StepError> {
    Ok(results)
}

/// The map workflow, with `element` as its map step.
fn mapping(element: Step<u64, u64>) -> Workflow {
    Workflow::builder("mapping")
        .start(Step::new("list", list))
        .map(element)
        .reduce(Step::new("collect", collect))
        .build()
        .unwrap()
}

#[tokio::test]
async fn runners_share_the_elements_of_one_map() {
    let broker = TestBroker::new();
    let mut runners = Vec::new();
    let mut counts = Vec::new();
    for _ in 0..2 {
        let ran = Arc::new(AtomicUsize::new(0));
        let counter = ran.clone();
        let element = Step::new("double", move |x: u64, _: StepContext| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                // Long enough that one runner cannot take every element.
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok::<u64, StepError>(x * 2)
            }
        });
        runners.push(broker.start_runner(&mapping(element)).await);
        counts.push(ran);
    }
    let outcome = runners[0]
        .trigger_and_wait(run_id("shared"), &200_u64, WAIT)
        .await
        .unwrap();
    let expected: Vec<u64> = (0..200).map(|x| x * 2).collect();
    assert_eq!(
        outcome,
        RunOutcome::Succeeded(json!({ "collect": expected }))
    );
    let ran: Vec<usize> = counts.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    assert_eq!(
        ran.iter().sum::<usize>(),
        200,
        "each element ran once: {ran:?}"
    );
    assert!(
        ran.iter().all(|n| *n > 0),
        "both runners ran elements: {ran:?}"
    );
    for runner in runners {
        runner.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn an_element_delivered_twice_is_counted_once() {
    let broker = TestBroker::new();
    // Element 2 waits until the test has sent element 0 a second time, so that the copy's
    // result reaches the collector before the map is complete.
    let release = Arc::new(Notify::new());
    let gate = release.clone();
    let element = Step::new("square", move |x: u64, ctx: StepContext| {
        let gate = gate.clone();
        async move {
            if ctx.element() == Some(2) {
                gate.notified().await;
            }
            Ok::<u64, StepError>(x * x)
        }
    });
    let flow = mapping(element);
    let runner = broker.start_runner(&flow).await;
    let mut events = Events::subscribe(runner.client()).await;
    let waiting = {
        let runner = &runner;
        async move { runner.trigger_and_wait(run_id("twice"), &3_u64, WAIT).await }
    };
    let duplicate = async {
        events.wait_for("twice", "square", EventKind::Started).await;
        events
            .until(|seen| {
                seen.iter()
                    .any(|e| e.element_index() == Some(0) && e.kind == EventKind::Succeeded)
            })
            .await;
        // A second copy of element 0's input, as an at-least-once redelivery would bring.
        let names = Names::new(broker.prefix()).unwrap();
        let mut headers = FieldTable::default();
        headers.insert(
            header::RUN_ID.into(),
            AMQPValue::LongString(LongString::from("twice")),
        );
        headers.insert(header::MAP_INDEX.into(), AMQPValue::LongLongInt(0));
        headers.insert(header::MAP_SIZE.into(), AMQPValue::LongLongInt(3));
        let (connection, channel) = broker.raw_channel().await;
        channel
            .basic_publish(
                "".into(),
                names
                    .step_queue(flow.name(), flow.step("square").unwrap().name())
                    .as_str()
                    .into(),
                BasicPublishOptions::default(),
                b"0",
                BasicProperties::default().with_headers(headers),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        let _ = connection.close(200, "done".into()).await;
        events
            .until(|seen| {
                seen.iter()
                    .filter(|e| e.element_index() == Some(0) && e.kind == EventKind::Succeeded)
                    .count()
                    == 2
            })
            .await;
        release.notify_one();
        events
    };
    let (outcome, mut events) = tokio::join!(waiting, duplicate);
    assert_eq!(
        outcome.unwrap(),
        RunOutcome::Succeeded(json!({ "collect": [0, 1, 4] }))
    );
    events
        .until(|seen| seen.iter().any(|e| e.kind == EventKind::RunSucceeded))
        .await;
    let trail = events.trail("twice");
    assert_eq!(
        trail.iter().filter(|e| *e == "collect.started").count(),
        1,
        "{trail:?}"
    );
    assert_eq!(
        trail.iter().filter(|e| *e == "run.succeeded").count(),
        1,
        "{trail:?}"
    );
    runner.shutdown().await.unwrap();
}
