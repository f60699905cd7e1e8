//! A publishing channel the broker closed (here: a publish to an exchange that was deleted) is
//! replaced, and the run goes on once the exchange is back. One test in its own binary: the
//! metrics recorder, which shows the replacement, is process-wide.

use std::time::{Duration, Instant};

use inqubo::{EventKind, Step, StepContext, StepError, Workflow};
use inqubo_testkit::{Events, TestBroker, free_local_addr, metric_sample, run_id, scrape_metrics};
use lapin::options::ExchangeDeleteOptions;

async fn double(n: u64, _: StepContext) -> Result<u64, StepError> {
    Ok(n * 2)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_channel_the_broker_closed_is_replaced_and_the_run_goes_on() {
    let broker = TestBroker::new();
    let flow = Workflow::builder("closed")
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
    // The run join sends an admitted run's input through the retry exchange: without it, the
    // publish is refused and the broker closes the channel (404 NOT_FOUND).
    let topology = broker.topology();
    let (_connection, channel) = broker.raw_channel().await;
    channel
        .exchange_delete(
            topology.retry_exchange().as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await
        .unwrap();

    runner.trigger(run_id("c1"), &21_u64).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = scrape_metrics(addr).await;
        if metric_sample(&metrics, "inqubo_publish_channel_renewals_total").unwrap_or(0.0) >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no new channel:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    topology.declare_shared(&channel).await.unwrap();

    let succeeded = events.wait_for("c1", "only", EventKind::Succeeded).await;
    assert_eq!(succeeded.body, 42, "published on the new channel");
    runner.shutdown().await.unwrap();
}
