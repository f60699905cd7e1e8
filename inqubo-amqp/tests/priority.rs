//! Priority classes on the real broker (quorum queues, which have no priorities of their own):
//! high-priority runs triggered behind a backlog of normal ones finish first.

use std::time::Duration;

use futures_util::StreamExt;
use inqubo_core::{EventKind, Priority, Step, StepContext, StepError, Workflow};
use inqubo_testkit::{TestBroker, run_id};

async fn first(n: u64, _: StepContext) -> Result<u64, StepError> {
    Ok(n + 1)
}

async fn second(n: u64, _: StepContext) -> Result<u64, StepError> {
    Ok(n * 2)
}

fn prioritized() -> Workflow {
    Workflow::builder("prioritized")
        .priorities(true)
        .start(Step::new("first", first))
        .then(Step::new("second", second))
        .build()
        .unwrap()
}

const BACKLOG: u64 = 10_000;
const URGENT: u64 = 5;

#[tokio::test(flavor = "multi_thread")]
async fn high_priority_runs_behind_a_normal_backlog_finish_first() {
    let broker = TestBroker::new();
    let flow = prioritized();
    // Declare the topology, then queue the backlog with no runner up.
    broker.start_runner(&flow).await.shutdown().await.unwrap();
    let client = broker.client().await;
    let mut events = client.subscribe(Some(flow.name())).await.unwrap();
    for n in 0..BACKLOG {
        client
            .trigger(flow.name(), run_id(format!("normal-{n}")), &n)
            .await
            .unwrap();
    }
    for n in 0..URGENT {
        client
            .trigger_with_priority(
                flow.name(),
                run_id(format!("urgent-{n}")),
                &n,
                Priority::High,
            )
            .await
            .unwrap();
    }
    let runner = broker.runner(&flow).prefetch(20).connect().await.unwrap();
    let mut normal_done = 0;
    let mut urgent_done = Vec::new();
    let waited = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(event) = events.next().await {
            let event = event.unwrap();
            if event.kind != EventKind::RunSucceeded {
                continue;
            }
            if event.run_id.as_str().starts_with("urgent-") {
                urgent_done.push((event.run_id.to_string(), event.body.clone(), normal_done));
                if urgent_done.len() == URGENT as usize {
                    return;
                }
            } else {
                normal_done += 1;
            }
        }
    })
    .await;
    assert!(waited.is_ok(), "urgent runs ended: {urgent_done:?}");
    for (run, body, _) in &urgent_done {
        let n: u64 = run.trim_start_matches("urgent-").parse().unwrap();
        assert_eq!(body["second"], (n + 1) * 2, "{run}");
    }
    let before_last = urgent_done.last().unwrap().2;
    eprintln!(
        "normal runs ended before each urgent one: {:?}",
        urgent_done.iter().map(|u| u.2).collect::<Vec<_>>()
    );
    assert!(
        before_last < BACKLOG / 10,
        "every urgent run ended before a tenth of the backlog: {before_last} normal runs had ended"
    );
    runner.shutdown().await.unwrap();
}
