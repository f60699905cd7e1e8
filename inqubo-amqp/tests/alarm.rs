//! A memory alarm during a run, on a private node (the default broker is never alarmed): the
//! runner stops starting attempts while the broker blocks its publishing connection, the
//! attempt that finished meanwhile publishes its outcome once the alarm lifts, and the run ends
//! once.

use std::{sync::Arc, time::Duration};

use inqubo_amqp::Runner;
use inqubo_core::{EventKind, Step, StepContext, StepError, Workflow};
use inqubo_testkit::{Events, PrivateNode, run_id};
use serde_json::json;
use tokio::sync::Notify;

/// The private node's AMQP port (its Erlang distribution port is 20000 above).
const PORT: u16 = 5698;

/// Waits until the node reports (or, with `raised` false, no longer reports) a memory alarm.
async fn alarm(node: &PrivateNode, raised: bool) {
    for _ in 0..100 {
        let alarms = node.ctl(&["eval", "rabbit_alarm:get_alarms()."]);
        if alarms.contains("memory") == raised {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the memory alarm did not turn {raised}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_memory_alarm_during_a_run_holds_it_and_the_run_ends_once_it_lifts() {
    let node = PrivateNode::start("alarm", PORT);
    let gate = Arc::new(Notify::new());
    let held = Arc::clone(&gate);
    let flow = Workflow::builder("alarmed")
        .start(Step::new("wait", move |n: u64, _ctx: StepContext| {
            let held = Arc::clone(&held);
            async move {
                if n == 1 {
                    held.notified().await;
                }
                Ok::<_, StepError>(n)
            }
        }))
        .then(Step::new("after", |n: u64, _ctx: StepContext| async move {
            Ok::<_, StepError>(n + 1)
        }))
        .build()
        .unwrap();
    let runner = Runner::builder(flow.clone())
        .url(node.url())
        .connect()
        .await
        .unwrap();
    let mut events = Events::subscribe(runner.client()).await;
    runner.trigger(run_id("held"), &1_u64).await.unwrap();
    events.wait_for("held", "wait", EventKind::Started).await;

    node.ctl(&["set_vm_memory_high_watermark", "0.000001"]);
    alarm(&node, true).await;
    // The attempt ends during the alarm: its outcome cannot be confirmed yet.
    gate.notify_one();
    // The alarm lasts a while (well under the 10 s a confirm may take).
    tokio::time::sleep(Duration::from_secs(2)).await;
    node.ctl(&["set_vm_memory_high_watermark", "0.4"]);
    alarm(&node, false).await;

    let seen = events
        .until(|seen| {
            seen.iter()
                .any(|e| e.run_id.as_str() == "held" && e.kind == EventKind::RunSucceeded)
        })
        .await;
    let ended: Vec<_> = seen
        .iter()
        .filter(|e| e.run_id.as_str() == "held" && e.step.is_none())
        .collect();
    assert_eq!(ended.len(), 1, "one end: {ended:?}");
    assert_eq!(ended[0].body, json!({"after": 2}));
    let waits = seen
        .iter()
        .filter(|e| {
            e.run_id.as_str() == "held"
                && e.kind == EventKind::Succeeded
                && e.step.as_ref().is_some_and(|s| s.as_str() == "wait")
        })
        .count();
    assert_eq!(waits, 1, "the held attempt ran once");
    // And the runner goes on as before.
    let outcome = runner
        .trigger_and_wait(run_id("after-alarm"), &5_u64, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        inqubo_amqp::RunOutcome::Succeeded(json!({"after": 6}))
    );
    runner.shutdown().await.unwrap();
}
