//! Joins and run completion against the real RabbitMQ.

use std::{sync::Arc, time::Duration};

use inqubo_amqp::RunOutcome;
use inqubo_core::protocol::Names;
use inqubo_core::{EventKind, FailureReason, Step, StepContext, StepError, Workflow};
use inqubo_testkit::{Events, FlakyProxy, TestBroker, run_id};
use lapin::{
    BasicProperties,
    options::BasicPublishOptions,
    types::{AMQPValue, FieldTable, LongString},
};
use serde_json::json;
use tokio::sync::Semaphore;

const WAIT: Duration = Duration::from_secs(30);

async fn a(n: u64, _: StepContext) -> Result<u64, StepError> {
    Ok(n)
}
async fn b(n: u64, _: StepContext) -> Result<u64, StepError> {
    Ok(n + 1)
}
async fn c(n: u64, _: StepContext) -> Result<String, StepError> {
    Ok(format!("c{n}"))
}
async fn d((left, right): (u64, String), _: StepContext) -> Result<String, StepError> {
    Ok(format!("{left}+{right}"))
}

fn diamond() -> Workflow {
    Workflow::builder("diamond")
        .start(Step::new("a", a))
        .then((Step::new("b", b), Step::new("c", c)))
        .then(Step::new("d", d))
        .build()
        .unwrap()
}

fn count(events: &Events, run: &str, step_event: &str) -> usize {
    events
        .trail(run)
        .iter()
        .filter(|e| *e == step_event)
        .count()
}

#[tokio::test]
async fn a_join_fires_once_with_both_outputs_and_the_run_succeeds() {
    let broker = TestBroker::new();
    let runner = broker.start_runner(&diamond()).await;
    let mut events = Events::subscribe(runner.client()).await;

    let outcome = runner
        .trigger_and_wait(run_id("r1"), &5_u64, WAIT)
        .await
        .unwrap();

    assert_eq!(outcome, RunOutcome::Succeeded(json!({"d": "6+c5"})));
    let done = events.wait_for("r1", "d", EventKind::Succeeded).await;
    assert_eq!(done.body, json!("6+c5"));
    events
        .until(|seen| {
            seen.iter()
                .any(|e| e.run_id.as_str() == "r1" && e.kind == EventKind::RunSucceeded)
        })
        .await;
    assert_eq!(count(&events, "r1", "d.started"), 1);
    assert_eq!(count(&events, "r1", "run.succeeded"), 1);
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_failed_branch_fails_the_run_and_the_join_never_fires() {
    async fn c_fails(_: u64, _: StepContext) -> Result<String, StepError> {
        Err(StepError::fatal("c cannot"))
    }
    let broker = TestBroker::new();
    let flow = Workflow::builder("broken")
        .start(Step::new("a", a))
        .then((Step::new("b", b), Step::new("c", c_fails)))
        .then(Step::new("d", d))
        .build()
        .unwrap();
    let runner = broker.start_runner(&flow).await;
    let mut events = Events::subscribe(runner.client()).await;

    let outcome = runner
        .trigger_and_wait(run_id("bad"), &1_u64, WAIT)
        .await
        .unwrap();

    let RunOutcome::Failed(failure) = outcome else {
        panic!("expected a failed run, got {outcome:?}");
    };
    assert_eq!(failure.step.as_str(), "c");
    assert_eq!(failure.reason, FailureReason::Fatal);
    assert_eq!(failure.error, "c cannot");
    // b's piece reaches the join after or before the failure; either way d never starts.
    events.wait_for("bad", "b", EventKind::Succeeded).await;
    events
        .until(|seen| {
            seen.iter()
                .any(|e| e.run_id.as_str() == "bad" && e.kind == EventKind::RunFailed)
        })
        .await;
    assert_eq!(count(&events, "bad", "d.started"), 0);
    assert_eq!(count(&events, "bad", "run.failed"), 1);
    runner.shutdown().await.unwrap();
}

fn piece_properties(run: &str, parent: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        "run-id".into(),
        AMQPValue::LongString(LongString::from(run)),
    );
    headers.insert(
        "join-parent".into(),
        AMQPValue::LongString(LongString::from(parent)),
    );
    BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(2)
}

#[tokio::test]
async fn parent_completions_delivered_twice_still_fire_one_join() {
    let broker = TestBroker::new();
    let flow = diamond();
    let runner = broker.start_runner(&flow).await;
    let mut events = Events::subscribe(runner.client()).await;
    let topology = broker.topology();
    let (connection, channel) = broker.raw_channel().await;
    let key = Names::join_key(flow.name(), "d", Names::join_slot("dup"));
    // Pieces as a runner publishes them: b twice (an at-least-once redelivery), then c, then
    // b once more after the join fired.
    for (parent, body) in [("b", "7"), ("b", "7"), ("c", "\"x\""), ("b", "7")] {
        channel
            .basic_publish(
                topology.join_exchange().as_str().into(),
                key.as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                piece_properties("dup", parent),
            )
            .await
            .unwrap();
    }
    let done = events.wait_for("dup", "d", EventKind::Succeeded).await;
    assert_eq!(done.body, json!("7+x"));
    // A later run through the same shard proves the late duplicate was handled.
    runner
        .trigger_and_wait(run_id("after"), &1_u64, WAIT)
        .await
        .unwrap();
    assert_eq!(count(&events, "dup", "d.started"), 1);
    let _ = connection.close(200, "done".into()).await;
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_join_survives_the_loss_of_the_runner_holding_its_state() {
    let broker = TestBroker::new();
    let gate = Arc::new(Semaphore::new(0));
    let flow_with_gate = |gate: Arc<Semaphore>| {
        Workflow::builder("held")
            .start(Step::new("a", a))
            .then((
                Step::new("b", b),
                Step::new("c", move |n: u64, _ctx: StepContext| {
                    let gate = Arc::clone(&gate);
                    async move {
                        // c waits until the test has cut the runner that holds the join state.
                        gate.acquire().await.map_err(StepError::fatal)?.forget();
                        Ok::<_, StepError>(format!("c{n}"))
                    }
                }),
            ))
            .then(Step::new("d", d))
            .build()
            .unwrap()
    };
    let proxy = FlakyProxy::start(&broker).await;
    // The first runner registers first, so it is the active consumer of every join shard.
    let holder = broker
        .runner(&flow_with_gate(Arc::clone(&gate)))
        .url(proxy.url(&broker))
        .connect()
        .await
        .unwrap();
    let survivor = broker
        .runner(&flow_with_gate(Arc::clone(&gate)))
        .connect()
        .await
        .unwrap();
    let observer = broker.client().await;
    let mut events = Events::subscribe(&observer).await;

    observer
        .trigger(holder.workflow().name(), run_id("h1"), &3_u64)
        .await
        .unwrap();
    events.wait_for("h1", "b", EventKind::Succeeded).await;
    events.wait_for("h1", "c", EventKind::Started).await;
    proxy.cut();
    gate.add_permits(8);

    let done = events.wait_for("h1", "d", EventKind::Succeeded).await;
    assert_eq!(done.body, json!("4+c3"));
    events
        .until(|seen| {
            seen.iter()
                .any(|e| e.run_id.as_str() == "h1" && e.kind == EventKind::RunSucceeded)
        })
        .await;
    holder.shutdown().await.unwrap();
    survivor.shutdown().await.unwrap();
}

#[tokio::test]
async fn many_interleaved_runs_each_join_once() {
    let broker = TestBroker::new();
    let runner = broker.start_runner(&diamond()).await;
    let mut events = Events::subscribe(runner.client()).await;

    const RUNS: u64 = 60;
    for i in 0..RUNS {
        runner.trigger(run_id(format!("m{i}")), &i).await.unwrap();
    }
    events
        .until(|seen| {
            seen.iter()
                .filter(|e| e.kind == EventKind::RunSucceeded)
                .count()
                == RUNS as usize
        })
        .await;

    for i in 0..RUNS {
        let run = format!("m{i}");
        assert_eq!(count(&events, &run, "d.started"), 1, "{run}");
        let end = events
            .seen()
            .iter()
            .find(|e| e.run_id.as_str() == run && e.kind == EventKind::RunSucceeded)
            .unwrap();
        assert_eq!(end.body, json!({"d": format!("{}+c{i}", i + 1)}));
    }
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_chain_reports_its_end_without_join_state() {
    let broker = TestBroker::new();
    let flow = Workflow::builder("line")
        .start(Step::new("a", a))
        .then(Step::new("b", b))
        .build()
        .unwrap();
    let runner = broker.start_runner(&flow).await;

    let outcome = runner
        .trigger_and_wait(run_id("l"), &1_u64, WAIT)
        .await
        .unwrap();

    assert_eq!(outcome, RunOutcome::Succeeded(json!({"b": 2})));
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn every_event_of_a_run_carries_one_trace_id() {
    use futures_util::StreamExt;
    use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};

    let broker = TestBroker::new();
    let runner = broker.start_runner(&diamond()).await;
    let (connection, channel) = broker.raw_channel().await;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.name().clone(),
            broker.prefix().into(),
            "diamond.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();

    runner.trigger(run_id("traced"), &1_u64).await.unwrap();
    let mut traces = Vec::new();
    loop {
        let delivery = tokio::time::timeout(WAIT, consumer.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let traceparent = match delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("traceparent"))
        {
            Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            other => panic!("{} has traceparent {other:?}", delivery.routing_key),
        };
        traces.push((delivery.routing_key.to_string(), traceparent));
        if delivery.routing_key.as_str() == "diamond.run.succeeded" {
            break;
        }
    }

    let trace_of = |tp: &str| inqubo_core::trace::trace_id(tp).map(str::to_owned);
    let first = trace_of(&traces[0].1).expect("the trigger starts a trace");
    for (key, traceparent) in &traces {
        assert_eq!(
            trace_of(traceparent).as_deref(),
            Some(first.as_str()),
            "{key}"
        );
    }
    assert!(traces.len() >= 10, "{traces:?}");
    let _ = connection.close(200, "done".into()).await;
    runner.shutdown().await.unwrap();
}

/// Polls `check` until it holds, for at most `limit`.
async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check()
}

#[tokio::test]
async fn join_shards_spread_over_the_runners_and_move_when_one_stops() {
    let broker = TestBroker::new();
    let flow = diamond();
    // Two joins (`d` and the run join) of 4 shards each: 8 shards for 4 runners.
    let mut runners = Vec::new();
    for _ in 0..4 {
        runners.push(broker.start_runner(&flow).await);
    }
    let observer = broker.client().await;
    let mut events = Events::subscribe(&observer).await;
    let triggering = {
        let client = observer.clone();
        let name = flow.name().clone();
        tokio::spawn(async move {
            let mut sent = 0_u64;
            // Runs keep every shard busy while the shards move.
            while sent < 400 {
                client
                    .trigger(&name, run_id(format!("s{sent}")), &sent)
                    .await
                    .unwrap();
                sent += 1;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            sent
        })
    };

    let spread = eventually(Duration::from_secs(30), || {
        runners.iter().filter(|r| r.join_shards_held() > 0).count() >= 3
    })
    .await;
    let held: Vec<usize> = runners.iter().map(|r| r.join_shards_held()).collect();
    assert!(spread, "join shards held per runner: {held:?}");

    let busiest = (0..runners.len())
        .max_by_key(|&i| runners[i].join_shards_held())
        .unwrap();
    runners.remove(busiest).shutdown().await.unwrap();
    let taken_over = eventually(Duration::from_secs(20), || {
        runners.iter().map(|r| r.join_shards_held()).sum::<usize>() == 8
    })
    .await;
    let held: Vec<usize> = runners.iter().map(|r| r.join_shards_held()).collect();
    assert!(taken_over, "after a runner stopped, shards held: {held:?}");

    let sent = triggering.await.unwrap();
    events
        .until(|seen| {
            seen.iter()
                .filter(|e| e.kind == EventKind::RunSucceeded)
                .count()
                >= sent as usize
        })
        .await;
    // Shards handed over between batches fire nothing twice.
    for i in 0..sent {
        let run = format!("s{i}");
        assert_eq!(
            count(&events, &run, "d.started"),
            1,
            "{run}: {:?}",
            events.trail(&run)
        );
        assert_eq!(count(&events, &run, "run.succeeded"), 1, "{run}");
    }
    for runner in runners {
        runner.shutdown().await.unwrap();
    }
}

/// Runners that start together: one counts the join shards while another declares them. A
/// count that stopped part-way would make its runner bind every slot to too few queues, so
/// each count must be all of them, or none (the default for a workflow not declared yet).
#[tokio::test]
async fn a_runner_counting_join_shards_while_another_declares_them_sees_all_or_none() {
    use std::sync::atomic::{AtomicBool, Ordering};

    const SHARDS: u32 = 8;
    let broker = TestBroker::new();
    let flow = diamond();
    // Registers the workflow, so that the fixture deletes its queues.
    let _ = broker.runner(&flow);
    let topology = broker.topology();
    let (declaring, channel) = broker.raw_channel().await;
    let (counting, _) = broker.raw_channel().await;
    topology.declare_shared(&channel).await.unwrap();
    let declared = AtomicBool::new(false);
    let declare = async {
        topology
            .declare_workflow(&channel, &flow, SHARDS)
            .await
            .unwrap();
        declared.store(true, Ordering::SeqCst);
    };
    let count = async {
        let mut counts = Vec::new();
        while !declared.load(Ordering::SeqCst) {
            counts.push(topology.join_shards(&counting, flow.name()).await.unwrap());
        }
        counts.push(topology.join_shards(&counting, flow.name()).await.unwrap());
        counts
    };
    let ((), counts) = tokio::join!(declare, count);
    assert!(counts.len() > 2, "the count ran {} times", counts.len());
    assert!(
        counts
            .iter()
            .all(|n| *n == SHARDS || *n == inqubo_core::protocol::JOIN_SHARDS),
        "{counts:?}"
    );
    assert_eq!(counts.last(), Some(&SHARDS));
    let _ = declaring.close(200, "done".into()).await;
    let _ = counting.close(200, "done".into()).await;
}
