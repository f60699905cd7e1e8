//! A runner whose messages the broker keeps refusing publishes them on a new channel, and the
//! run goes on once the broker takes them again. One test in its own binary: the metrics
//! recorder, which shows the renewal, is process-wide.

use std::time::{Duration, Instant};

use inqubo::{EventKind, Step, StepContext, StepError, Workflow};
use inqubo_testkit::{Events, TestBroker, free_local_addr, metric_sample, run_id, scrape_metrics};
use lapin::{
    options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldTable, LongString},
};

async fn double(n: u64, _: StepContext) -> Result<u64, StepError> {
    Ok(n * 2)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runner_renews_the_channel_the_broker_keeps_refusing() {
    let broker = TestBroker::new();
    let flow = Workflow::builder("refused")
        .start(Step::new("only", double))
        .build()
        .unwrap();
    let addr = free_local_addr();
    let runner = broker
        .runner(&flow)
        .metrics_addr(addr)
        .connect()
        .await
        .unwrap();
    let mut events = Events::subscribe_to(runner.client(), Some(runner.workflow().name())).await;
    // A queue that refuses everything, bound to the step's `succeeded`: the broker nacks it.
    let (_connection, channel) = broker.raw_channel().await;
    let blocker = format!("{}.blocker", broker.prefix());
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from("reject-publish")),
    );
    channel
        .queue_declare(
            blocker.as_str().into(),
            QueueDeclareOptions::default(),
            args,
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            blocker.as_str().into(),
            broker.prefix().into(),
            "refused.step.only.succeeded".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    runner.trigger(run_id("r1"), &21_u64).await.unwrap();
    // The runner publishes again with backoff and, once its channel is 5 s old, opens a new
    // one. Nothing announces that but the counter: poll it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = scrape_metrics(addr).await;
        if metric_sample(&metrics, "inqubo_publish_channel_renewals_total").unwrap_or(0.0) >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no channel renewal:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    channel
        .queue_delete(blocker.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let succeeded = events.wait_for("r1", "only", EventKind::Succeeded).await;
    assert_eq!(succeeded.body, 42, "published on the new channel");
    runner.shutdown().await.unwrap();
}
