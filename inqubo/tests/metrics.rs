//! A runner started with `metrics_addr` serves its Prometheus metrics. One test in its own
//! binary: the metrics recorder is process-wide.

use std::time::Duration;

use inqubo::{EventKind, RetryPolicy, Runner, Step, StepContext, StepError, Workflow};
use inqubo_core::testing::{fail_first, fatal_first};
use inqubo_testkit::{
    Events, TestBroker, free_local_addr, metric_sample, run_id, scrape_metrics as scrape,
};

async fn double(n: u64, _: StepContext) -> Result<u64, StepError> {
    Ok(n * 2)
}

/// The value of the sample whose line starts with `series`.
fn sample(metrics: &str, series: &str) -> f64 {
    metric_sample(metrics, series).unwrap_or_else(|| panic!("no sample {series} in:\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn runner_serves_step_counters_durations_and_confirm_latency() {
    let broker = TestBroker::new();
    let flow = Workflow::builder("metered")
        .start(
            Step::new("double", fail_first(1, double))
                .retry(RetryPolicy::limited(2, Duration::from_millis(100))),
        )
        .then(Step::new("check", fatal_first(1, double)))
        .build()
        .unwrap();
    let addr = free_local_addr();
    let runner: Runner = broker
        .runner(&flow)
        .metrics_addr(addr)
        .connect()
        .await
        .unwrap();
    let mut events = Events::subscribe_to(runner.client(), Some(runner.workflow().name())).await;
    runner.trigger(run_id("one"), &1_u64).await.unwrap();
    events.wait_for("one", "check", EventKind::Failed).await;

    let metrics = scrape(addr).await;
    let labels = |step: &str| format!("{{workflow=\"metered\",step=\"{step}\"}}");
    assert_eq!(
        sample(
            &metrics,
            &format!("inqubo_steps_started_total{}", labels("double"))
        ),
        2.0
    );
    assert_eq!(
        sample(
            &metrics,
            &format!("inqubo_steps_retried_total{}", labels("double"))
        ),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            &format!("inqubo_steps_succeeded_total{}", labels("double"))
        ),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            &format!("inqubo_steps_failed_total{}", labels("check"))
        ),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            "inqubo_steps_parked_total{workflow=\"metered\",step=\"check\",reason=\"fatal\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            &format!("inqubo_step_duration_seconds_count{}", labels("double"))
        ),
        2.0
    );
    assert!(sample(&metrics, "inqubo_publish_confirm_seconds_count") >= 6.0);
    // Every delivery is settled once the runner has shut down.
    runner.shutdown().await.unwrap();
    let after = scrape(addr).await;
    assert_eq!(
        sample(&after, "inqubo_steps_in_flight{workflow=\"metered\"}"),
        0.0
    );
}
