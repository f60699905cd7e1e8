//! `inqubo monitor` records run history in SQLite and PostgreSQL; `runs` and `run` read it.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use inqubo_core::{
    EventKind, RetryPolicy, Step, StepContext, StepError, Workflow, WorkflowName,
    testing::fail_first,
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

fn start_monitor(broker: &TestBroker, store: &str) -> Child {
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

#[tokio::test(flavor = "multi_thread")]
async fn history_in_sqlite() {
    let dir = std::env::temp_dir().join(format!("inqubo-history-{:x}", rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = format!("sqlite://{}/history.db", dir.display());
    history_is_recorded(&store).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The PostgreSQL server tests may create databases on; `scripts/test.sh` sets it up.
fn postgres_admin_url() -> String {
    std::env::var("INQUBO_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn history_in_postgres() {
    use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};
    let admin = postgres_admin_url();
    let database = format!("inqubo_history_{:x}", rand_suffix());
    let mut connection = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
        panic!("PostgreSQL at {admin} is needed for this test ({e}); scripts/test.sh sets it up")
    });
    connection
        .execute(AssertSqlSafe(format!("CREATE DATABASE {database}")))
        .await
        .unwrap();
    let (base, _) = admin.rsplit_once('/').unwrap();
    history_is_recorded(&format!("{base}/{database}")).await;
    connection
        .execute(AssertSqlSafe(format!(
            "DROP DATABASE {database} WITH (FORCE)"
        )))
        .await
        .unwrap();
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        ^ u64::from(std::process::id())
}
