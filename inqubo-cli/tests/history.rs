//! `inqubo monitor` records run history in SQLite and PostgreSQL; `runs` and `run` read it.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use inqubo_core::{
    EventKind, RetryPolicy, Step, StepContext, StepError, Workflow, WorkflowName,
    testing::{fail_first, fatal_first},
};
use inqubo_testkit::{Events, TestBroker, run_id};
use serde_json::Value;

fn inqubo(broker: &TestBroker, store: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_inqubo"))
        .args([
            "--amqp-url",
            broker.url(),
            "--prefix",
            broker.prefix(),
            "--json",
        ])
        .args(args)
        .args(["--store", store])
        .output()
        .expect("the inqubo binary runs")
}

/// `inqubo run <id>` as people read it, each line's runs of spaces made one.
fn run_text(broker: &TestBroker, store: &str, run: &str) -> Vec<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_inqubo"))
        .args(["--amqp-url", broker.url(), "--prefix", broker.prefix()])
        .args(["run", run, "--store", store])
        .output()
        .expect("the inqubo binary runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// `step#attempt gN status` for every attempt of a `run --json` report.
fn attempts(report: &Value) -> Vec<String> {
    report["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            format!(
                "{}#{} g{} {}",
                a["step"].as_str().unwrap(),
                a["attempt"],
                a["generation"],
                a["status"].as_str().unwrap()
            )
        })
        .collect()
}

/// `gN status` for every generation of a `run --json` report.
fn generations(report: &Value) -> Vec<String> {
    report["generations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            format!(
                "g{} {}",
                g["generation"],
                g["status"].as_str().unwrap_or("-")
            )
        })
        .collect()
}

/// The run ids `inqubo runs --json <filter>` lists.
fn listed(broker: &TestBroker, store: &str, filter: &[&str]) -> Vec<String> {
    let output = inqubo(broker, store, &[&["runs"], filter].concat());
    assert!(output.status.success(), "{output:?}");
    let runs: Value = serde_json::from_slice(&output.stdout).unwrap();
    runs.as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().to_owned())
        .collect()
}

fn start_monitor(broker: &TestBroker, store: &str) -> Child {
    start_monitor_with(broker, store, &[])
}

fn start_monitor_with(broker: &TestBroker, store: &str, options: &[&str]) -> Child {
    let mut monitor = Command::new(env!("CARGO_BIN_EXE_inqubo"))
        .args([
            "--amqp-url",
            broker.url(),
            "--prefix",
            broker.prefix(),
            "monitor",
            "--store",
            store,
        ])
        .args(options)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(monitor.stderr.as_mut().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert!(
        ready.contains("monitoring prefix"),
        "monitor did not start: {ready}"
    );
    monitor
}

/// Reads `inqubo run <id>` until `done` holds: the monitor writes asynchronously, and there is
/// no event for "written to the store" to wait on.
fn run_report(broker: &TestBroker, store: &str, run: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let output = inqubo(broker, store, &["run", run]);
        if output.status.success() {
            let report: Value = serde_json::from_slice(&output.stdout).unwrap();
            if done(&report) {
                return report;
            }
        }
        assert!(
            Instant::now() < deadline,
            "run {run} never reached the expected state"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn double(n: u64, _: StepContext) -> Result<u64, StepError> {
    Ok(n * 2)
}

async fn history_is_recorded(store: &str) {
    let broker = TestBroker::new();
    let flow = Workflow::builder("recorded")
        .start(
            Step::new("double", fail_first(1, double))
                .retry(RetryPolicy::limited(2, Duration::from_millis(100))),
        )
        .then(Step::new("check", |n: u64, _ctx: StepContext| async move {
            if n > 100 {
                return Err(StepError::fatal(format!("{n} is too large")));
            }
            Ok(n)
        }))
        .build()
        .unwrap();
    let runner = broker.start_runner(&flow).await;
    let mut monitor = start_monitor(&broker, store);
    let mut events = Events::subscribe_to(runner.client(), Some(runner.workflow().name())).await;

    let unknown = runner
        .client()
        .trigger(&WorkflowName::new("nobody").unwrap(), run_id("x"), &1_u64)
        .await;
    assert!(
        matches!(unknown, Err(inqubo::Error::Unroutable { .. })),
        "a monitor must not make triggers of unknown workflows routable: {unknown:?}"
    );
    runner.trigger(run_id("good"), &5_u64).await.unwrap();
    runner.trigger(run_id("bad"), &500_u64).await.unwrap();
    events.wait_for("good", "check", EventKind::Succeeded).await;
    events.wait_for("bad", "check", EventKind::Failed).await;

    let good = run_report(&broker, store, "good", |r| r["status"] == "succeeded");
    let bad = run_report(&broker, store, "bad", |r| r["status"] == "failed");
    let failed = inqubo(
        &broker,
        store,
        &["runs", "--status", "failed", "--since", "1h"],
    );
    monitor.kill().unwrap();
    monitor.wait().unwrap();

    assert_eq!(good["workflow"], "recorded");
    assert_eq!(good["outcome"], serde_json::json!({"check": 10}));
    let attempts = good["attempts"].as_array().unwrap();
    let summary: Vec<String> = attempts
        .iter()
        .map(|a| {
            format!(
                "{}#{} {}",
                a["step"].as_str().unwrap(),
                a["attempt"],
                a["status"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            "double#1 retrying",
            "double#2 succeeded",
            "check#1 succeeded"
        ]
    );
    assert_eq!(attempts[0]["error"], "injected failure of attempt 1");
    assert_eq!(attempts[1]["output"], 10);
    assert_eq!(good["input"], 5, "the run input, from the trigger");
    assert_eq!(attempts[0]["input"], 5);
    assert_eq!(attempts[2]["input"], 10, "check received double's output");
    assert_eq!(bad["outcome"]["step"], "check");
    assert_eq!(bad["outcome"]["reason"], "fatal");
    let failed: Value = serde_json::from_slice(&failed.stdout).unwrap();
    let ids: Vec<&str> = failed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["bad"]);
    runner.shutdown().await.unwrap();
}

async fn plus_one(n: u64, _: StepContext) -> Result<u64, StepError> {
    Ok(n + 1)
}

/// Waits until `run` of `events` ended (in any generation) as `kind`.
async fn wait_for_end(events: &mut Events, run: &str, kind: EventKind, generation: u32) {
    events
        .until(|seen| {
            seen.iter()
                .any(|e| e.run_id.as_str() == run && e.kind == kind && e.generation == generation)
        })
        .await;
}

async fn a_resumed_run_is_recorded_failed_then_succeeded(store: &str) {
    let broker = TestBroker::new();
    let flow = Workflow::builder("resumed")
        .start(Step::new("double", double))
        .then(Step::new("check", fatal_first(1, plus_one)))
        .build()
        .unwrap();
    let runner = broker.start_runner(&flow).await;
    let mut monitor = start_monitor(&broker, store);
    let mut events = Events::subscribe_to(runner.client(), Some(runner.workflow().name())).await;

    runner.trigger(run_id("r"), &4_u64).await.unwrap();
    wait_for_end(&mut events, "r", EventKind::RunFailed, 1).await;
    let failed = run_report(&broker, store, "r", |r| r["status"] == "failed");
    let resumed = runner
        .client()
        .resume(runner.workflow().name(), &run_id("r"))
        .await
        .unwrap();
    assert_eq!(resumed.generation, 2);
    wait_for_end(&mut events, "r", EventKind::RunSucceeded, 2).await;
    let succeeded = run_report(&broker, store, "r", |r| r["status"] == "succeeded");
    let text = run_text(&broker, store, "r");
    let listed_failed = listed(&broker, store, &["--status", "failed"]);
    let listed_succeeded = listed(&broker, store, &["--status", "succeeded"]);
    monitor.kill().unwrap();
    monitor.wait().unwrap();

    assert_eq!(generations(&failed), ["g1 failed"]);
    assert_eq!(failed["outcome"]["step"], "check");
    assert_eq!(succeeded["generation"], 2);
    assert_eq!(generations(&succeeded), ["g1 failed", "g2 succeeded"]);
    assert_eq!(
        succeeded["generations"][0]["outcome"]["error"],
        "injected fatal failure of attempt 1"
    );
    let (first, second) = (
        succeeded["generations"][0]["ended_ms"].as_i64().unwrap(),
        succeeded["generations"][1]["ended_ms"].as_i64().unwrap(),
    );
    assert!(first <= second, "generation 1 ended first");
    assert_eq!(succeeded["outcome"], serde_json::json!({"check": 9}));
    assert_eq!(
        attempts(&succeeded),
        [
            "double#1 g1 succeeded",
            "check#1 g1 failed",
            "check#2 g2 succeeded"
        ],
        "the resumed attempt is a row of its own"
    );
    let check = &succeeded["attempts"];
    assert_eq!(check[1]["error"], "injected fatal failure of attempt 1");
    assert_eq!(check[1]["reason"], "fatal");
    assert_eq!(check[2]["error"], Value::Null);
    assert_eq!(check[2]["output"], 9);
    assert_eq!(check[2]["input"], 8, "the parked input went back");
    assert!(listed_failed.is_empty(), "{listed_failed:?}");
    assert_eq!(listed_succeeded, ["r"]);
    assert_eq!(text[0], "run r of resumed: succeeded");
    assert_eq!(text[1], "input 4", "the run's input, as text too");
    assert!(
        text[2].starts_with("generation 1 failed after ")
            && text[2]
                .ends_with("check attempt 1 failed: injected fatal failure of attempt 1 (fatal)"),
        "{text:#?}"
    );
    assert!(
        text[3].starts_with("generation 2 succeeded after "),
        "{text:#?}"
    );
    assert_eq!(
        text.iter().filter(|l| *l == "input 8").count(),
        2,
        "each attempt of check with the input it got: {text:#?}"
    );
    assert!(
        text.iter()
            .any(|l| l.starts_with("check attempt 2 gen 2 succeeded ") && l.ends_with(" 9")),
        "{text:#?}"
    );
    runner.shutdown().await.unwrap();
}

async fn waits_for_its_cancellation(n: u64, ctx: StepContext) -> Result<u64, StepError> {
    // Returns as soon as the run is cancelled (or after a while, where nothing tells it).
    let _ = tokio::time::timeout(Duration::from_secs(20), ctx.cancelled()).await;
    Ok(n)
}

async fn a_cancelled_run_is_recorded_with_its_skipped_step(store: &str) {
    let broker = TestBroker::new();
    let flow = Workflow::builder("cancelled")
        .start(Step::new("wait", waits_for_its_cancellation))
        .then(Step::new("double", double))
        .build()
        .unwrap();
    let runner = broker.start_runner(&flow).await;
    let mut monitor = start_monitor(&broker, store);
    let mut events = Events::subscribe_to(runner.client(), Some(runner.workflow().name())).await;

    runner.trigger(run_id("c"), &3_u64).await.unwrap();
    runner.trigger(run_id("other"), &3_u64).await.unwrap();
    events.wait_for("c", "wait", EventKind::Started).await;
    runner
        .client()
        .cancel(
            runner.workflow().name(),
            &run_id("c"),
            "no longer needed",
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    events.wait_for("c", "double", EventKind::Skipped).await;
    let report = run_report(&broker, store, "c", |r| {
        r["status"] == "cancelled" && r["attempts"].as_array().is_some_and(|a| a.len() == 2)
    });
    let text = run_text(&broker, store, "c");
    let cancelled = listed(&broker, store, &["--status", "cancelled"]);
    let refused = inqubo(&broker, store, &["runs", "--status", "lost"]);
    runner
        .client()
        .cancel(
            runner.workflow().name(),
            &run_id("other"),
            "tidy up",
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    monitor.kill().unwrap();
    monitor.wait().unwrap();

    assert_eq!(
        report["outcome"],
        serde_json::json!({"reason": "no longer needed"})
    );
    assert!(report["finished_ms"].is_i64());
    assert_eq!(generations(&report), ["g1 cancelled"]);
    assert_eq!(
        attempts(&report),
        ["wait#1 g1 succeeded", "double#1 g1 skipped"]
    );
    let skipped = &report["attempts"][1];
    assert_eq!(skipped["reason"], "run_cancelled");
    assert_eq!(skipped["input"], 3, "what it would have received");
    assert_eq!(cancelled, ["c"], "the other run is still running");
    assert!(
        !refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("cancelled"),
        "an unknown status is refused with the known ones: {refused:?}"
    );
    assert_eq!(text[0], "run c of cancelled: cancelled");
    assert_eq!(text[1], "input 3");
    assert!(
        text[2].starts_with("generation 1 cancelled after ")
            && text[2].ends_with("no longer needed"),
        "{text:#?}"
    );
    assert!(
        text.contains(&"double attempt 1 gen 1 skipped - not run: run_cancelled".to_owned()),
        "{text:#?}"
    );
    runner.shutdown().await.unwrap();
}

/// Gates that hold `held` steps, one per run, until the test opens them.
static GATES: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Notify>>>,
> = std::sync::LazyLock::new(Default::default);

fn gate(run: &str) -> std::sync::Arc<tokio::sync::Notify> {
    GATES
        .lock()
        .unwrap()
        .entry(run.to_owned())
        .or_default()
        .clone()
}

async fn held(n: u64, ctx: StepContext) -> Result<u64, StepError> {
    gate(ctx.run_id.as_str()).notified().await;
    Ok(n + 1)
}

async fn a_run_first_seen_mid_way_ends_with_its_status(store: &str) {
    let broker = TestBroker::new();
    let flow = Workflow::builder("midway")
        .start(Step::new("double", double))
        .then(Step::new("held", held))
        .build()
        .unwrap();
    let runner = broker.start_runner(&flow).await;
    let mut events = Events::subscribe_to(runner.client(), Some(runner.workflow().name())).await;
    // Unique per test, since the gates are shared by the tests of this process.
    let run = format!("mid-{:x}", rand_suffix());

    // The run starts, and is under way, before the monitor does: it misses the trigger and
    // the first step.
    runner.trigger(run_id(run.as_str()), &5_u64).await.unwrap();
    events.wait_for(&run, "held", EventKind::Started).await;
    let mut monitor = start_monitor(&broker, store);
    gate(&run).notify_one();
    wait_for_end(&mut events, &run, EventKind::RunSucceeded, 1).await;
    let report = run_report(&broker, store, &run, |r| r["status"] == "succeeded");
    let running = listed(&broker, store, &["--status", "running"]);
    monitor.kill().unwrap();
    monitor.wait().unwrap();

    assert_eq!(
        report["workflow"], "midway",
        "named by the events' routing keys"
    );
    assert_eq!(report["input"], Value::Null, "the trigger was missed");
    assert_eq!(report["outcome"], serde_json::json!({"held": 11}));
    assert!(report["finished_ms"].is_i64());
    assert_eq!(generations(&report), ["g1 succeeded"]);
    assert_eq!(attempts(&report), ["held#1 g1 succeeded"]);
    assert!(running.is_empty(), "{running:?}");
    runner.shutdown().await.unwrap();
}

/// The PostgreSQL server tests may create databases on; `scripts/test.sh` sets it up.
fn postgres_admin_url() -> String {
    std::env::var("INQUBO_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A store of the test's own: a SQLite file in a fresh directory, or a fresh PostgreSQL
/// database; removed when dropped.
struct TestStore {
    url: String,
    sqlite_dir: Option<std::path::PathBuf>,
    postgres_database: Option<String>,
}

impl TestStore {
    fn sqlite() -> Self {
        let dir = std::env::temp_dir().join(format!("inqubo-history-{:x}", rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            url: format!("sqlite://{}/history.db", dir.display()),
            sqlite_dir: Some(dir),
            postgres_database: None,
        }
    }

    async fn postgres() -> Self {
        use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};
        let admin = postgres_admin_url();
        let database = format!("inqubo_history_{:x}", rand_suffix());
        let mut connection = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL at {admin} is needed for this test ({e}); scripts/test.sh sets it up"
            )
        });
        connection
            .execute(AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .await
            .unwrap();
        let (base, _) = admin.rsplit_once('/').unwrap();
        Self {
            url: format!("{base}/{database}"),
            sqlite_dir: None,
            postgres_database: Some(database),
        }
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        if let Some(dir) = self.sqlite_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        let Some(database) = self.postgres_database.take() else {
            return;
        };
        // On a runtime of its own: `drop` cannot await, and may run during a panic.
        let dropped = std::thread::spawn(move || {
            use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut connection = PgConnection::connect(&postgres_admin_url()).await?;
                connection
                    .execute(AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
                    )))
                    .await
                    .map(drop)
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop the test database: {dropped:?}");
        }
    }
}

/// Runs each scenario once with a SQLite store and once with a PostgreSQL one:
/// `<scenario>::sqlite` and `<scenario>::postgres`.
macro_rules! on_both_stores {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread")]
            async fn sqlite() {
                let store = super::TestStore::sqlite();
                super::$scenario(&store.url).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn postgres() {
                let store = super::TestStore::postgres().await;
                super::$scenario(&store.url).await;
            }
        }
    )*};
}

async fn a_map_run_is_recorded_as_one_step_with_counts(store: &str) {
    async fn list(n: u64, _: StepContext) -> Result<Vec<u64>, StepError> {
        Ok((0..n).collect())
    }
    async fn odd_fails(x: u64, _: StepContext) -> Result<u64, StepError> {
        if x == 3 {
            return Err(StepError::fatal("three"));
        }
        Ok(x)
    }
    async fn total(v: Vec<u64>, _: StepContext) -> Result<u64, StepError> {
        Ok(v.iter().sum())
    }
    let broker = TestBroker::new();
    let flow = Workflow::builder("mapped")
        .fail_fast(false)
        .start(Step::new("list", list))
        .map(Step::new("check", odd_fails))
        .reduce(Step::new("total", total))
        .build()
        .unwrap();
    let runner = broker.start_runner(&flow).await;
    let mut monitor = start_monitor(&broker, store);
    let mut events = Events::subscribe_to(runner.client(), Some(runner.workflow().name())).await;
    runner.trigger(run_id("m"), &6_u64).await.unwrap();
    events
        .until(|seen| {
            seen.iter()
                .filter(|e| {
                    e.step.as_ref().is_some_and(|s| s.as_str() == "check")
                        && matches!(e.kind, EventKind::Succeeded | EventKind::Failed)
                })
                .count()
                == 6
        })
        .await;
    let report = run_report(&broker, store, "m", |r| {
        r["status"] == "failed" && r["maps"][0]["succeeded"] == 5 && r["maps"][0]["failed"] == 1
    });
    let text = run_text(&broker, store, "m");
    monitor.kill().unwrap();
    monitor.wait().unwrap();
    assert_eq!(
        report["maps"],
        serde_json::json!([{
            "step": "check", "elements": 6, "succeeded": 5, "running": 0, "failed": 1, "skipped": 0,
        }])
    );
    assert_eq!(
        attempts(&report),
        ["list#1 g1 succeeded"],
        "elements are counted in the map, not listed one by one"
    );
    assert!(
        text.contains(
            &"check map of 6 elements: 5 succeeded, 0 running, 1 failed, 0 skipped".to_owned()
        ),
        "{text:#?}"
    );
    runner.shutdown().await.unwrap();
}

on_both_stores!(
    history_is_recorded,
    a_map_run_is_recorded_as_one_step_with_counts,
    a_resumed_run_is_recorded_failed_then_succeeded,
    a_cancelled_run_is_recorded_with_its_skipped_step,
    a_run_first_seen_mid_way_ends_with_its_status,
);

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_monitor_s_queue_keeps_only_the_newest_events() {
    let broker = TestBroker::new();
    let store = TestStore::sqlite();
    let mut monitor = start_monitor_with(&broker, &store.url, &["--max-backlog", "3"]);
    monitor.kill().unwrap();
    monitor.wait().unwrap();
    for n in 0..5_u8 {
        broker
            .publish_raw(
                "lost.step.a.started",
                lapin::BasicProperties::default(),
                &[b'0' + n],
            )
            .await;
    }
    let queue = format!("{}.monitor", broker.prefix());
    assert_eq!(broker.ready_messages(&queue).await, 3);
    let (connection, channel) = broker.raw_channel().await;
    // The queue has a single active consumer, which `basic.get` cannot be: consume instead.
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            lapin::options::BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    let mut bodies = Vec::new();
    while bodies.len() < 3 {
        use futures_util::StreamExt;
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        bodies.push(delivery.data);
    }
    assert_eq!(bodies, [b"2", b"3", b"4"], "the oldest two were dropped");
    let _ = connection.close(200, "done".into()).await;
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        ^ u64::from(std::process::id())
}
