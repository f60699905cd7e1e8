//! `inqubo topology reshard`: raising a workflow's join shards strands no open join, and a
//! piece addressed under the former count still reaches the shard that owns its run.

use std::{
    process::{Command, Output, Stdio},
    time::Duration,
};

use inqubo::{
    RetryPolicy,
    protocol::{Names, header},
};
use inqubo_core::{EventKind, Step, StepContext, StepError, Workflow};
use inqubo_testkit::{Events, TestBroker, run_id};
use lapin::{
    BasicProperties,
    options::BasicPublishOptions,
    types::{AMQPValue, FieldTable, LongString},
};
use serde_json::Value;

fn inqubo(broker: &TestBroker, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_inqubo"))
        .args(["--amqp-url", broker.url(), "--prefix", broker.prefix()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the inqubo binary runs")
}

async fn a(n: u64, _: StepContext) -> Result<u64, StepError> {
    Ok(n)
}

async fn b(n: u64, _: StepContext) -> Result<u64, StepError> {
    Ok(n + 1)
}

/// Fails its first attempt, whose retry waits in the delay tiers: meanwhile the join `d`
/// holds `b`'s output, open.
async fn c(n: u64, ctx: StepContext) -> Result<u64, StepError> {
    if ctx.attempt == 1 {
        return Err(StepError::retryable("later"));
    }
    Ok(n * 10)
}

async fn d((left, right): (u64, u64), _: StepContext) -> Result<u64, StepError> {
    Ok(left + right)
}

fn diamond() -> Workflow {
    Workflow::builder("resharded")
        .start(Step::new("a", a))
        .then((
            Step::new("b", b),
            Step::new("c", c).retry(RetryPolicy::limited(1, Duration::from_secs(3))),
        ))
        .then(Step::new("d", d))
        .build()
        .unwrap()
}

const RUNS: u64 = 40;

#[tokio::test(flavor = "multi_thread")]
async fn raising_the_join_shards_moves_every_open_join_and_forwards_old_addresses() {
    let broker = TestBroker::new();
    let flow = diamond();
    let runner = broker.start_runner(&flow).await;
    let mut events = Events::subscribe(runner.client()).await;
    for n in 0..RUNS {
        runner.trigger(run_id(format!("r{n}")), &n).await.unwrap();
    }
    // Every run's join holds b's output while c's retry waits 3 s.
    events
        .until(|seen| {
            let count = |kind: EventKind, step: &str| {
                seen.iter()
                    .filter(|e| {
                        e.kind == kind && e.step.as_ref().is_some_and(|s| s.as_str() == step)
                    })
                    .count()
            };
            count(EventKind::Succeeded, "b") == RUNS as usize
                && count(EventKind::Retrying, "c") == RUNS as usize
        })
        .await;
    runner.shutdown().await.unwrap();

    let refused_while_up = {
        let up = broker.start_runner(&flow).await;
        let output = inqubo(
            &broker,
            &[
                "topology",
                "reshard",
                "resharded",
                "--join-shards",
                "8",
                "--yes",
            ],
        );
        up.shutdown().await.unwrap();
        output
    };
    assert_eq!(
        refused_while_up.status.code(),
        Some(1),
        "{refused_while_up:?}"
    );
    assert!(
        String::from_utf8_lossy(&refused_while_up.stderr).contains("stop every runner"),
        "{refused_while_up:?}"
    );

    let output = inqubo(
        &broker,
        &[
            "--json",
            "topology",
            "reshard",
            "resharded",
            "--join-shards",
            "8",
            "--yes",
        ],
    );
    assert!(output.status.success(), "{output:?}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let d = report["joins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["join"] == "d")
        .unwrap();
    assert_eq!(d["open_joins"], RUNS, "{report}");
    let per_shard: Vec<u64> = d["open_joins_per_shard"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    assert_eq!(per_shard.len(), 8);
    assert_eq!(per_shard.iter().sum::<u64>(), RUNS);
    assert!(
        per_shard[4..].iter().sum::<u64>() > 0,
        "some open joins moved to the new shards: {per_shard:?}"
    );
    let again = inqubo(
        &broker,
        &[
            "topology",
            "reshard",
            "resharded",
            "--join-shards",
            "8",
            "--yes",
        ],
    );
    assert_eq!(
        again.status.code(),
        Some(3),
        "the same count again changes nothing"
    );

    // A runner started now counts 8 shards; the retries come back and every join fires once.
    // (Subscribed first: the retries wait in c's queue, and the runs end at once.)
    let watcher = broker.client().await;
    let mut events = Events::subscribe(&watcher).await;
    let runner = broker.start_runner(&flow).await;
    events
        .until(|seen| {
            seen.iter()
                .filter(|e| e.kind == EventKind::RunSucceeded)
                .count()
                == RUNS as usize
        })
        .await;
    for n in 0..RUNS {
        let run = format!("r{n}");
        let end = events
            .seen()
            .iter()
            .find(|e| e.run_id.as_str() == run && e.kind == EventKind::RunSucceeded)
            .unwrap();
        assert_eq!(end.body["d"], n + 1 + n * 10, "run {run}");
    }
    assert_eq!(
        events
            .seen()
            .iter()
            .filter(|e| e.kind == EventKind::Started
                && e.step.as_ref().is_some_and(|s| s.as_str() == "d"))
            .count(),
        RUNS as usize,
        "each join fired once"
    );
    let topology = inqubo(&broker, &["--json", "topology", "resharded"]);
    let listed = String::from_utf8_lossy(&topology.stdout);
    assert!(listed.contains(".resharded._run.shard-7"), "{listed}");

    // A cancel addressed the former way (`run % 4`) to a run whose slot moved to a new shard:
    // the old shard sends it on, so the run's own shard learns of it, and a trigger of that
    // run afterwards starts nothing.
    let moved = (0..)
        .map(|i| format!("legacy-{i}"))
        .find(|id| Names::join_slot(id) % 8 >= 4)
        .unwrap();
    let mut headers = FieldTable::default();
    headers.insert(
        header::RUN_ID.into(),
        AMQPValue::LongString(LongString::from(moved.as_str())),
    );
    headers.insert(header::JOIN_CANCEL.into(), AMQPValue::Boolean(true));
    let (connection, channel) = broker.raw_channel().await;
    channel
        .basic_publish(
            broker.topology().join_exchange().as_str().into(),
            format!("resharded._run.{}", Names::join_slot(&moved) % 4)
                .as_str()
                .into(),
            BasicPublishOptions::default(),
            br#"{"reason": "addressed the old way"}"#,
            BasicProperties::default().with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let _ = connection.close(200, "done".into()).await;
    let ended = |kind: EventKind| {
        let moved = moved.clone();
        move |seen: &[inqubo::LifecycleEvent]| {
            seen.iter()
                .any(|e| e.run_id.as_str() == moved && e.kind == kind)
        }
    };
    events.until(ended(EventKind::RunCancelled)).await;
    runner.trigger(run_id(moved.clone()), &1_u64).await.unwrap();
    let seen = events.until(ended(EventKind::RunDuplicate)).await;
    let duplicate = seen
        .iter()
        .find(|e| e.run_id.as_str() == moved && e.kind == EventKind::RunDuplicate)
        .unwrap();
    assert_eq!(duplicate.body["state"], "cancelled");
    assert!(
        !events.trail(&moved).iter().any(|e| e.starts_with("a.")),
        "{:?}",
        events.trail(&moved)
    );
    runner.shutdown().await.unwrap();
}
