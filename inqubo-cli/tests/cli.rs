//! The real `inqubo` binary against the real RabbitMQ, each test under a prefix of its own.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use inqubo::protocol::{header, wire};
use inqubo_core::{EventKind, Step, StepContext, StepError, Workflow};
use inqubo_testkit::{Events, TestBroker, run_id};
use lapin::options::BasicGetOptions;
use serde_json::{Value, json};

fn inqubo(broker: &TestBroker, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_inqubo"))
        .args(["--amqp-url", broker.url(), "--prefix", broker.prefix()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the inqubo binary runs")
}

fn stdout_json(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON on stdout")
}

async fn double(n: u64, _: StepContext) -> Result<u64, StepError> {
    Ok(n * 2)
}

fn doubling() -> Workflow {
    Workflow::builder("doubling")
        .start(Step::new("double", double))
        .then(Step::new("again", double))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn workflows_and_show_describe_what_runners_announced() {
    let broker = TestBroker::new();
    let runner = broker.start_runner(&doubling()).await;

    let listed = stdout_json(&inqubo(&broker, &["--json", "workflows"]));
    let shown = inqubo(&broker, &["show", "doubling"]);
    let dot = inqubo(&broker, &["show", "doubling", "--dot"]);
    let missing = inqubo(&broker, &["show", "absent"]);
    let shown_json = stdout_json(&inqubo(&broker, &["--json", "show", "doubling"]));
    // The prefix from the environment, as runners built with `from_env` read it.
    let from_env = Command::new(env!("CARGO_BIN_EXE_inqubo"))
        .args(["--amqp-url", broker.url(), "workflows"])
        .env("INQUBO_PREFIX", broker.prefix())
        .output()
        .unwrap();
    let listed_text = String::from_utf8_lossy(&from_env.stdout);

    assert!(from_env.status.success(), "{from_env:?}");
    assert!(
        listed_text.contains("doubling") && listed_text.contains("double"),
        "INQUBO_PREFIX names the prefix: {listed_text}"
    );
    assert_eq!(shown_json["name"], "doubling");
    assert_eq!(shown_json["steps"][1]["parents"], json!(["double"]));
    assert_eq!(listed[0]["workflow"], "doubling");
    let steps = listed[0]["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0]["step"], "double");
    assert_eq!(steps[0]["depth"], 0);
    assert_eq!(steps[0]["consumers"], 1);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains("again") && text.contains("after double"),
        "{text}"
    );
    let graph = String::from_utf8_lossy(&dot.stdout);
    assert!(graph.contains("\"double\" -> \"again\""), "{graph}");
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no runner announced workflow `absent`")
    );
    runner.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn trigger_prints_the_run_id_and_waits_for_the_outcome() {
    let broker = TestBroker::new();
    let runner = broker.start_runner(&doubling()).await;
    let mut events = Events::subscribe_to(runner.client(), Some(runner.workflow().name())).await;

    let waited = stdout_json(&inqubo(
        &broker,
        &[
            "--json",
            "trigger",
            "doubling",
            "--run-id",
            "w1",
            "--input",
            "5",
            "--wait",
            "--timeout",
            "30",
        ],
    ));
    let refused = inqubo(
        &broker,
        &["trigger", "doubling", "--run-id", "bad", "--input", "{nope"],
    );
    let plain = inqubo(
        &broker,
        &["trigger", "doubling", "--run-id", "p1", "--input", "1"],
    );
    let wrong_type = inqubo(
        &broker,
        &[
            "trigger",
            "doubling",
            "--run-id",
            "w2",
            "--input",
            "\"text\"",
            "--wait",
            "--timeout",
            "30",
        ],
    );

    assert_eq!(
        waited,
        json!({"run_id": "w1", "status": "succeeded", "outputs": {"again": 20}})
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not valid JSON; nothing was published")
    );
    assert_eq!(String::from_utf8_lossy(&plain.stdout).trim(), "p1");
    assert_eq!(
        wrong_type.status.code(),
        Some(1),
        "a failed run exits non-zero"
    );
    assert!(String::from_utf8_lossy(&wrong_type.stdout).contains("undecodable"));
    events.wait_for("p1", "again", EventKind::Succeeded).await;

    // A run id names one run: waiting on it again reports how it ended, and starts nothing.
    let again = inqubo(
        &broker,
        &[
            "--json",
            "trigger",
            "doubling",
            "--run-id",
            "w1",
            "--input",
            "9",
            "--wait",
            "--timeout",
            "30",
        ],
    );
    assert_eq!(again.status.code(), Some(3), "a duplicate changes nothing");
    assert_eq!(
        serde_json::from_slice::<Value>(&again.stdout).unwrap(),
        json!({"run_id": "w1", "status": "duplicate", "existing": "succeeded", "generation": 1})
    );
    assert_eq!(
        events
            .trail("w1")
            .iter()
            .filter(|e| *e == "again.started")
            .count(),
        1,
        "{:?}",
        events.trail("w1")
    );
    assert!(
        events.trail("bad").is_empty(),
        "nothing was published for invalid JSON"
    );
    runner.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_follows_events_and_leaves_nothing_behind() {
    let broker = TestBroker::new();
    let runner = broker.start_runner(&doubling()).await;
    let mut watcher = Command::new(env!("CARGO_BIN_EXE_inqubo"))
        .args([
            "--amqp-url",
            broker.url(),
            "--prefix",
            broker.prefix(),
            "--json",
            "watch",
            "doubling",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The watcher says it is watching once its queue is bound.
    let mut stderr = BufReader::new(watcher.stderr.take().unwrap());
    let mut ready = String::new();
    stderr.read_line(&mut ready).unwrap();
    assert!(ready.contains("watching workflow doubling"), "{ready}");

    runner.trigger(run_id("seen"), &2_u64).await.unwrap();
    let lines = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for line in BufReader::new(watcher.stdout.take().unwrap()).lines() {
            let event: Value = serde_json::from_str(&line.unwrap()).unwrap();
            let end = event["event"] == "run_succeeded";
            seen.push(event);
            if end {
                break;
            }
        }
        watcher.kill().unwrap();
        watcher.wait().unwrap();
        seen
    })
    .join()
    .unwrap();

    let kinds: Vec<String> = lines
        .iter()
        .filter(|e| e["run_id"] == "seen")
        .map(|e| {
            format!(
                "{}.{}",
                e["step"].as_str().unwrap_or("run"),
                e["event"].as_str().unwrap()
            )
        })
        .collect();
    // Triggers are not bound (they would make unknown workflows' triggers routable).
    assert_eq!(kinds.first().unwrap(), "double.started");
    for line in &lines {
        let at = line["at"].as_str().unwrap();
        assert!(at.len() == 24 && at.ends_with('Z'), "{at}");
    }
    assert!(kinds.contains(&"again.succeeded".to_owned()), "{kinds:?}");
    assert_eq!(kinds.last().unwrap(), "run.run_succeeded");
    runner.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn parked_messages_can_be_listed_replayed_and_purged() {
    let broker = TestBroker::new();
    let healthy = Arc::new(AtomicBool::new(false));
    let gate = Arc::clone(&healthy);
    let flow = Workflow::builder("flaky")
        .start(Step::new("check", move |n: u64, _ctx: StepContext| {
            let healthy = gate.load(Ordering::SeqCst);
            async move {
                if healthy {
                    Ok(n)
                } else {
                    Err(StepError::fatal("dependency is down"))
                }
            }
        }))
        .build()
        .unwrap();
    let runner = broker.start_runner(&flow).await;
    let mut events = Events::subscribe_to(runner.client(), Some(runner.workflow().name())).await;
    for run in ["p1", "p2"] {
        runner.trigger(run_id(run), &1_u64).await.unwrap();
        events.wait_for(run, "check", EventKind::Failed).await;
    }
    // An input longer than the 80 characters the text list shows: scripts get it whole.
    let long = "9".repeat(100);
    runner.trigger(run_id("p3"), &long).await.unwrap();
    events.wait_for("p3", "check", EventKind::Failed).await;

    let listed = stdout_json(&inqubo(&broker, &["--json", "parked", "list", "flaky"]));
    let shown = stdout_json(&inqubo(
        &broker,
        &["--json", "parked", "show", "flaky", "2"],
    ));
    let shown_text = inqubo(&broker, &["parked", "show", "flaky", "2"]);
    let listed_text = inqubo(&broker, &["parked", "list", "flaky"]);
    let shown_text = String::from_utf8_lossy(&shown_text.stdout).into_owned();
    let listed_text = String::from_utf8_lossy(&listed_text.stdout).into_owned();
    assert!(
        shown_text
            .lines()
            .any(|l| l.starts_with("reason") && l.ends_with("fatal")),
        "text, not JSON: {shown_text}"
    );
    assert!(!shown_text.trim_start().starts_with('{'), "{shown_text}");
    assert_eq!(listed_text.lines().count(), 3, "a line each: {listed_text}");
    assert_eq!(listed[2]["run_id"], "p3");
    assert_eq!(listed[2]["input"], format!("\"{long}\""), "whole in JSON");
    healthy.store(true, Ordering::SeqCst);
    let replayed = stdout_json(&inqubo(
        &broker,
        &["--json", "parked", "replay", "flaky", "1"],
    ));
    let replayed_run = listed[0]["run_id"].as_str().unwrap().to_owned();
    events
        .wait_for(&replayed_run, "check", EventKind::Succeeded)
        .await;
    let refused = inqubo(&broker, &["parked", "purge", "flaky"]);
    let purged = stdout_json(&inqubo(
        &broker,
        &["--json", "parked", "purge", "flaky", "--yes"],
    ));
    let after = stdout_json(&inqubo(&broker, &["--json", "parked", "list", "flaky"]));

    assert_eq!(listed.as_array().unwrap().len(), 3);
    assert_eq!(listed[0]["reason"], "fatal");
    assert_eq!(listed[0]["error"], "dependency is down");
    assert_eq!(listed[0]["step"], "check");
    assert_eq!(listed[0]["attempt"], 1, "the attempt is a number");
    assert_eq!(shown["number"], 2);
    assert_eq!(shown["input"], "1");
    assert_eq!(shown["generation"], 1);
    assert_eq!(
        shown["message_id"],
        format!(
            "parked:{}:flaky:triggered",
            shown["run_id"].as_str().unwrap()
        )
    );
    assert_eq!(replayed, json!({"replayed": 1, "kept": []}));
    assert!(
        !refused.status.success(),
        "purge without --yes and no terminal is refused"
    );
    assert_eq!(purged, json!({"purged": 2}));
    assert_eq!(after, json!([]));
    runner.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_is_the_next_attempt_of_the_next_generation_with_run_id_and_trace() {
    let broker = TestBroker::new();
    let flow = Workflow::builder("doomed")
        .start(Step::new("check", |_: u64, _ctx: StepContext| async {
            Err::<u64, _>(StepError::fatal("always down"))
        }))
        .build()
        .unwrap();
    let runner = broker.start_runner(&flow).await;
    let mut events = Events::subscribe_to(runner.client(), Some(flow.name())).await;
    runner.trigger(run_id("t1"), &7_u64).await.unwrap();
    events.wait_for("t1", "check", EventKind::Failed).await;
    // No runner any more: the replayed input stays in the step's queue to be looked at.
    runner.shutdown().await.unwrap();
    let topology = broker.topology();
    let workflow = flow.name();
    let (connection, channel) = broker.raw_channel().await;
    let parked = channel
        .basic_get(
            topology.parked_queue(workflow).as_str().into(),
            BasicGetOptions::default(),
        )
        .await
        .unwrap()
        .expect("a parked message")
        .delivery;
    // Closing without acknowledging puts it back.
    connection.close(200, "peeked".into()).await.unwrap();
    let parked = wire::incoming(&parked);
    let trace = parked
        .traceparent()
        .expect("the trigger's trace")
        .to_owned();
    assert_eq!(parked.message_id, Some("parked:t1:doomed:triggered"));

    let listed = stdout_json(&inqubo(&broker, &["--json", "parked", "list", "doomed"]));
    let replayed = stdout_json(&inqubo(
        &broker,
        &["--json", "parked", "replay", "doomed", "--run-id", "t1"],
    ));
    let step_queue = topology.step_queue(workflow, &"check".parse().unwrap());
    let inputs = broker.drain(step_queue.as_str(), 1).await;
    let after = stdout_json(&inqubo(&broker, &["--json", "parked", "list", "doomed"]));

    assert_eq!(listed[0]["attempt"], 1);
    assert_eq!(listed[0]["run_id"], "t1");
    assert_eq!(listed[0]["message_id"], "parked:t1:doomed:triggered");
    assert_eq!(listed[0]["generation"], 1);
    assert_eq!(replayed, json!({"replayed": 1, "kept": []}));
    assert_eq!(after, json!([]));
    let ids: Vec<_> = inputs
        .iter()
        .map(|d| wire::incoming(d).message_id)
        .collect();
    assert_eq!(ids, [Some("resume:g2:t1:doomed:triggered")]);
    let input = wire::incoming(&inputs[0]);
    assert_eq!(input.headers.text(header::RUN_ID), Some("t1"));
    assert_eq!(input.traceparent(), Some(trace.as_str()));
    assert!(!input.headers.contains(header::PARKED_STEP));
    // Attempt numbers continue after the failed attempt 1; the run's generation moves on.
    assert_eq!(input.attempt(), Ok(2));
    assert_eq!(input.generation(), 2);
    assert_eq!(input.body, b"7");
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Waits for run `run`'s event of `kind` (a run event: triggered, succeeded, failed, cancelled).
async fn run_event(events: &mut Events, run: &str, kind: EventKind) -> inqubo::LifecycleEvent {
    let is = |e: &inqubo::LifecycleEvent| e.run_id.as_str() == run && e.kind == kind;
    let seen = events.until(|seen| seen.iter().any(is)).await;
    seen.iter().find(|e| is(e)).cloned().unwrap()
}

/// Waits for its run to be cancelled when its input is not 0 (and at most 30 s).
async fn hold(n: u64, ctx: StepContext) -> Result<u64, StepError> {
    if n > 0 {
        let _ = tokio::time::timeout(Duration::from_secs(30), ctx.cancelled()).await;
    }
    Ok(n)
}

fn patient() -> Workflow {
    Workflow::builder("patient")
        .start(Step::new("hold", hold))
        .then(Step::new("after", double))
        .build()
        .unwrap()
}

/// A history store in a directory of its own (removed on drop) that records `runs` as
/// (workflow, run id) pairs, as `inqubo monitor` would have.
struct Store {
    dir: std::path::PathBuf,
    url: String,
}

impl Store {
    async fn recording(broker: &TestBroker, runs: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "inqubo-cli-{}-{}",
            std::process::id(),
            broker.prefix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}/history.db", dir.display());
        // Any command that opens the store creates it with its schema.
        stdout_json(&inqubo(broker, &["--json", "runs", "--store", &url]));
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&url).await.unwrap();
        for (workflow, run) in runs {
            sqlx::query(
                "INSERT INTO runs (workflow, run_id, status, created_ms, updated_ms)
                 VALUES ($1, $2, 'running', 0, 0)",
            )
            .bind(*workflow)
            .bind(*run)
            .execute(&pool)
            .await
            .unwrap();
        }
        pool.close().await;
        Self { dir, url }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_a_running_run_and_refuses_one_that_ended() {
    let broker = TestBroker::new();
    let runner = broker.start_runner(&patient()).await;
    let mut events = Events::subscribe_to(runner.client(), Some(runner.workflow().name())).await;
    runner.trigger(run_id("c1"), &1_u64).await.unwrap();
    runner.trigger(run_id("f1"), &0_u64).await.unwrap();
    events.wait_for("c1", "hold", EventKind::Started).await;
    run_event(&mut events, "f1", EventKind::RunSucceeded).await;

    // The only announced workflow is the run's.
    let cancelled = inqubo(&broker, &["cancel", "c1", "--reason", "operator said so"]);
    assert_eq!(
        cancelled.status.code(),
        Some(0),
        "{}",
        text(&cancelled.stderr)
    );
    assert_eq!(
        text(&cancelled.stdout).trim(),
        "run c1 of workflow patient cancelled"
    );
    let end = run_event(&mut events, "c1", EventKind::RunCancelled).await;
    assert_eq!(end.body["reason"], "operator said so");
    // `hold` returned once told; the step after it was skipped and its input parked.
    events.wait_for("c1", "after", EventKind::Skipped).await;

    let again = inqubo(&broker, &["--json", "cancel", "c1"]);
    let finished = inqubo(&broker, &["cancel", "f1", "--workflow", "patient"]);
    let replay = inqubo(&broker, &["parked", "replay", "patient", "--run-id", "c1"]);
    let resume = inqubo(&broker, &["run", "resume", "c1", "--workflow", "patient"]);

    assert_eq!(again.status.code(), Some(3), "a refused cancel exits 3");
    assert_eq!(
        serde_json::from_slice::<Value>(&again.stdout).unwrap(),
        json!({"run_id": "c1", "workflow": "patient", "status": "refused", "ended": "cancelled"})
    );
    assert_eq!(finished.status.code(), Some(3));
    assert_eq!(
        text(&finished.stdout).trim(),
        "run f1 had already succeeded; nothing changed"
    );
    // The skipped input of a cancelled run stays parked: it would only be skipped again.
    assert_eq!(
        replay.status.code(),
        Some(3),
        "{} {}",
        text(&replay.stdout),
        text(&replay.stderr)
    );
    assert!(
        text(&replay.stdout).contains("its run was cancelled"),
        "{}",
        text(&replay.stdout)
    );
    assert_eq!(resume.status.code(), Some(3));
    assert!(
        text(&resume.stderr).contains("has no parked input to resume"),
        "{}",
        text(&resume.stderr)
    );
    runner.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_finds_the_workflow_in_the_store_and_says_when_no_runner_answers() {
    let broker = TestBroker::new();
    let other = Workflow::builder("other")
        .start(Step::new("double", double))
        .build()
        .unwrap();
    let runner = broker.start_runner(&patient()).await;
    let bystander = broker.start_runner(&other).await;
    let mut events = Events::subscribe_to(runner.client(), Some(runner.workflow().name())).await;
    runner.trigger(run_id("c2"), &1_u64).await.unwrap();
    events.wait_for("c2", "hold", EventKind::Started).await;
    let store = Store::recording(&broker, &[("patient", "c2")]).await;

    let ambiguous = inqubo(&broker, &["cancel", "c2"]);
    let found = inqubo(&broker, &["--json", "cancel", "c2", "--store", &store.url]);
    run_event(&mut events, "c2", EventKind::RunCancelled).await;
    runner.shutdown().await.unwrap();
    bystander.shutdown().await.unwrap();
    let unanswered = inqubo(
        &broker,
        &["cancel", "c3", "--workflow", "patient", "--timeout", "1s"],
    );

    assert_eq!(ambiguous.status.code(), Some(1));
    assert!(
        text(&ambiguous.stderr)
            .contains("2 are announced (other, patient); name it with --workflow"),
        "{}",
        text(&ambiguous.stderr)
    );
    assert_eq!(
        stdout_json(&found),
        json!({"run_id": "c2", "workflow": "patient", "status": "cancelled",
               "reason": "cancelled with inqubo cancel"})
    );
    assert_eq!(unanswered.status.code(), Some(2), "no runner answered");
    assert!(
        text(&unanswered.stderr).contains("it stays queued"),
        "{}",
        text(&unanswered.stderr)
    );
}

/// Fails for good on its first attempt, succeeds on the next.
async fn second_time_lucky(n: u64, ctx: StepContext) -> Result<u64, StepError> {
    if ctx.attempt == 1 {
        return Err(StepError::fatal("not this time"));
    }
    Ok(n + 1)
}

#[tokio::test(flavor = "multi_thread")]
async fn run_resume_sends_a_failed_chain_back_and_the_run_succeeds() {
    let broker = TestBroker::new();
    let flow = Workflow::builder("chain")
        .start(Step::new("first", double))
        .then(Step::new("second", second_time_lucky))
        .build()
        .unwrap();
    let runner = broker.start_runner(&flow).await;
    let mut events = Events::subscribe_to(runner.client(), Some(flow.name())).await;
    runner.trigger(run_id("r1"), &3_u64).await.unwrap();
    run_event(&mut events, "r1", EventKind::RunFailed).await;

    // No --workflow: the announced workflows' parked queues tell.
    let resumed = inqubo(&broker, &["run", "resume", "r1"]);
    assert_eq!(resumed.status.code(), Some(0), "{}", text(&resumed.stderr));
    assert_eq!(
        text(&resumed.stdout).trim(),
        "run r1 of workflow chain resumed as generation 2: 1 input(s) sent back to their steps"
    );
    let end = run_event(&mut events, "r1", EventKind::RunSucceeded).await;
    let again = inqubo(
        &broker,
        &["--json", "run", "resume", "r1", "--workflow", "chain"],
    );
    let unknown = inqubo(&broker, &["run", "resume", "nobody"]);
    // `inqubo run RUN_ID` still shows a run from the history, even one called `resume`.
    let store = Store::recording(&broker, &[]).await;
    let shown = inqubo(&broker, &["run", "--store", &store.url, "--", "resume"]);

    assert_eq!(end.body, json!({"second": 7}));
    assert_eq!(
        events.trail("r1"),
        [
            "first.started",
            "first.succeeded",
            "second.started",
            "second.failed",
            "run.failed",
            "run.resumed",
            "second.started",
            "second.succeeded",
            "run.succeeded"
        ]
    );
    assert_eq!(again.status.code(), Some(3), "nothing left to resume");
    assert!(
        text(&again.stderr).contains("run `r1` has no parked input to resume"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        text(&unknown.stderr)
            .contains("no announced workflow has parked inputs of run `nobody`; name its workflow with --workflow"),
        "{}",
        text(&unknown.stderr)
    );
    assert_eq!(shown.status.code(), Some(1));
    assert_eq!(
        text(&shown.stderr).trim(),
        "run resume is not in the history"
    );
    runner.shutdown().await.unwrap();
}

/// Parks one input per run of `runs`, in that order, in workflow `flaky` (whose step fails
/// for good until `healthy` is set).
async fn park_in_order(
    broker: &TestBroker,
    runs: &[&str],
) -> (inqubo::Runner, Events, Arc<AtomicBool>) {
    let healthy = Arc::new(AtomicBool::new(false));
    let gate = Arc::clone(&healthy);
    let flow = Workflow::builder("flaky")
        .start(Step::new("check", move |n: u64, _ctx: StepContext| {
            let healthy = gate.load(Ordering::SeqCst);
            async move {
                if healthy {
                    Ok(n)
                } else {
                    Err(StepError::fatal("dependency is down"))
                }
            }
        }))
        .build()
        .unwrap();
    let runner = broker.start_runner(&flow).await;
    let mut events = Events::subscribe_to(runner.client(), Some(flow.name())).await;
    for run in runs {
        runner.trigger(run_id(*run), &1_u64).await.unwrap();
        events.wait_for(run, "check", EventKind::Failed).await;
    }
    (runner, events, healthy)
}

fn parked_runs(broker: &TestBroker) -> Vec<String> {
    stdout_json(&inqubo(broker, &["--json", "parked", "list", "flaky"]))
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["run_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Replays by run id and by message id leave the other runs' messages parked in their order,
/// and so does a replay that fails or matches nothing.
async fn replays_by_identity_keep_the_others_in_order(broker: TestBroker) {
    let (runner, mut events, healthy) =
        park_in_order(&broker, &["p1", "p2", "p3", "p4", "p5"]).await;
    let listed = stdout_json(&inqubo(&broker, &["--json", "parked", "list", "flaky"]));
    let p4 = listed[3]["message_id"].as_str().unwrap().to_owned();
    let shown = stdout_json(&inqubo(
        &broker,
        &["--json", "parked", "show", "flaky", "--message-id", &p4],
    ));
    assert_eq!(shown["run_id"], "p4");
    assert_eq!(shown["generation"], 1);
    healthy.store(true, Ordering::SeqCst);

    let by_run = stdout_json(&inqubo(
        &broker,
        &["--json", "parked", "replay", "flaky", "--run-id", "p2"],
    ));
    run_event(&mut events, "p2", EventKind::RunSucceeded).await;
    assert_eq!(by_run, json!({"replayed": 1, "kept": []}));
    assert_eq!(parked_runs(&broker), ["p1", "p3", "p4", "p5"]);

    let by_id = inqubo(&broker, &["parked", "replay", "flaky", "--message-id", &p4]);
    assert_eq!(text(&by_id.stdout).trim(), "replayed 1 message(s)");
    run_event(&mut events, "p4", EventKind::RunSucceeded).await;
    assert_eq!(parked_runs(&broker), ["p1", "p3", "p5"]);

    let nobody = inqubo(
        &broker,
        &["parked", "replay", "flaky", "--run-id", "nobody"],
    );
    let wrong_step = inqubo(
        &broker,
        &[
            "parked", "replay", "flaky", "--run-id", "p3", "--step", "other",
        ],
    );
    assert_eq!(nobody.status.code(), Some(1));
    assert!(
        text(&nobody.stderr).contains("no parked message of run `nobody` in workflow `flaky`"),
        "{}",
        text(&nobody.stderr)
    );
    assert_eq!(wrong_step.status.code(), Some(1));
    assert!(
        text(&wrong_step.stderr).contains("no parked message of step `other` of run `p3`"),
        "{}",
        text(&wrong_step.stderr)
    );
    assert_eq!(parked_runs(&broker), ["p1", "p3", "p5"]);

    // With its step's queue gone, a replay fails at the first message and keeps them all.
    runner.shutdown().await.unwrap();
    let step_queue = broker
        .topology()
        .step_queue(&"flaky".parse().unwrap(), &"check".parse().unwrap());
    let (connection, channel) = broker.raw_channel().await;
    channel
        .queue_delete(step_queue.as_str().into(), Default::default())
        .await
        .unwrap();
    connection.close(200, "deleted".into()).await.unwrap();
    let failed = inqubo(&broker, &["parked", "replay", "flaky", "--all"]);
    assert_eq!(failed.status.code(), Some(1));
    assert!(
        text(&failed.stderr).contains(
            "cannot replay to step `check` of workflow `flaky`: the step has no queue any more; \
             0 message(s) replayed before that, the others stay parked where they were"
        ),
        "{}",
        text(&failed.stderr)
    );
    assert_eq!(parked_runs(&broker), ["p1", "p3", "p5"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn replays_by_identity_keep_the_others_in_order_in_a_quorum_queue() {
    replays_by_identity_keep_the_others_in_order(TestBroker::new()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replays_by_identity_keep_the_others_in_order_in_a_classic_queue() {
    replays_by_identity_keep_the_others_in_order(TestBroker::with_queue_type(
        inqubo::QueueType::Classic,
    ))
    .await;
}

#[test]
fn the_dashboard_refuses_a_network_address_without_a_token() {
    let broker = TestBroker::new();
    // Nothing is bound: the refusal comes first (port 0 would pick a free one).
    let refused = inqubo(&broker, &["monitor", "--listen", "0.0.0.0:0"]);
    assert!(!refused.status.success());
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(
        error.contains("refusing to serve the dashboard on 0.0.0.0:0 without a token"),
        "{error}"
    );
    assert!(error.contains("--allow-network-without-token"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn topology_lists_a_workflow_s_queues_and_deletes_them_only_when_asked() {
    let broker = TestBroker::new();
    let runner = broker.start_runner(&doubling()).await;

    let shown = stdout_json(&inqubo(&broker, &["--json", "topology", "doubling"]));
    let groups: Vec<&str> = shown
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["workflow"].as_str().unwrap())
        .collect();
    assert_eq!(groups, ["doubling", "(shared)"]);
    let queues = shown[0]["queues"].as_array().unwrap();
    let named = |suffix: &str| {
        queues
            .iter()
            .find(|q| q["queue"] == format!("{}.doubling.{suffix}", broker.prefix()))
            .unwrap_or_else(|| panic!("no queue {suffix}: {queues:?}"))
    };
    assert!(
        named("double")["purpose"]
            .as_str()
            .unwrap()
            .contains("the trigger")
    );
    assert!(
        named("again")["purpose"]
            .as_str()
            .unwrap()
            .contains("`double` succeeded")
    );
    assert_eq!(named("again")["consumers"], 1);
    assert_eq!(named("redelivered")["exists"], true);
    assert_eq!(named("_run.shard-0")["exists"], true);
    assert!(
        queues
            .iter()
            .all(|q| q["purpose"].as_str().is_some_and(|p| !p.is_empty()))
    );

    // Refused while the runner consumes, and without an answer nothing goes.
    let refused = inqubo(&broker, &["topology", "delete", "doubling", "--yes"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--force"));
    runner.shutdown().await.unwrap();
    let unanswered = inqubo(&broker, &["topology", "delete", "doubling"]);
    assert_eq!(unanswered.status.code(), Some(3), "stdin is empty: no");
    assert_eq!(
        stdout_json(&inqubo(&broker, &["--json", "topology", "doubling"]))[0]["queues"][0]["exists"],
        true
    );

    // Piped into a reader that stops early, it ends quietly (no panic on the closed pipe).
    let mut piped = Command::new(env!("CARGO_BIN_EXE_inqubo"))
        .args([
            "--amqp-url",
            broker.url(),
            "--prefix",
            broker.prefix(),
            "topology",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let mut reader = BufReader::new(piped.stdout.take().unwrap());
    reader.read_line(&mut first).unwrap();
    drop(reader);
    let ended = piped.wait_with_output().unwrap();
    assert!(first.starts_with("exchanges:"), "{first}");
    let stderr = String::from_utf8_lossy(&ended.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");

    let deleted = stdout_json(&inqubo(
        &broker,
        &["--json", "topology", "delete", "doubling", "--yes"],
    ));
    let declared = queues.iter().filter(|q| q["exists"] == true).count();
    assert_eq!(
        declared,
        queues.len(),
        "every runner stands for the schedules' leadership, so the scheduler queue exists too"
    );
    assert_eq!(deleted["deleted"].as_array().unwrap().len(), declared);
    let after = stdout_json(&inqubo(&broker, &["--json", "topology", "doubling"]));
    assert!(
        after[0]["queues"]
            .as_array()
            .unwrap()
            .iter()
            .all(|q| q["exists"] == false),
        "{after}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn trigger_in_a_while_is_held_by_the_broker_then_runs() {
    let broker = TestBroker::new();
    let runner = broker.start_runner(&doubling()).await;
    let mut events = Events::subscribe_to(runner.client(), Some(runner.workflow().name())).await;

    let scheduled = stdout_json(&inqubo(
        &broker,
        &[
            "--json", "trigger", "doubling", "--run-id", "later", "--input", "4", "--in", "1s",
        ],
    ));
    let text = inqubo(
        &broker,
        &[
            "trigger",
            "doubling",
            "--run-id",
            "later-text",
            "--input",
            "1",
            "--at",
            "2000-01-01T00:00:00Z",
        ],
    );
    let refused = inqubo(&broker, &["trigger", "doubling", "--in", "1s", "--wait"]);

    assert_eq!(scheduled["run_id"], "later");
    assert!(scheduled["starts_at"].as_str().unwrap().ends_with('Z'));
    assert!(text.status.success(), "{text:?}");
    assert!(String::from_utf8_lossy(&text.stderr).contains("starts at"));
    assert!(
        !refused.status.success(),
        "--in and --wait do not go together"
    );
    let done = events
        .wait_for("later", "again", EventKind::Succeeded)
        .await;
    assert_eq!(done.body, json!(16));
    events
        .wait_for("later-text", "again", EventKind::Succeeded)
        .await;
    runner.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn schedules_are_listed_added_fired_and_removed() {
    let broker = TestBroker::new();
    let runner = broker
        .runner(&doubling())
        .schedule(inqubo::Schedule::cron("hourly", "0 * * * *").unwrap())
        .connect()
        .await
        .unwrap();
    let mut events = Events::subscribe(runner.client()).await;
    let added = inqubo(
        &broker,
        &[
            "--json",
            "schedule",
            "add",
            "doubling",
            "every",
            "* * * * * *",
            "--input",
            "21",
        ],
    );
    let added = stdout_json(&added);
    assert_eq!(added["added"]["source"], "stored");
    assert_eq!(added["added"]["next"].as_array().unwrap().len(), 3);
    let again = inqubo(
        &broker,
        &["schedule", "add", "doubling", "every", "* * * * * *"],
    );
    assert_eq!(again.status.code(), Some(3), "{again:?}");
    let clash = inqubo(
        &broker,
        &["schedule", "add", "doubling", "hourly", "@daily"],
    );
    assert_eq!(
        clash.status.code(),
        Some(1),
        "a name in the code: {clash:?}"
    );
    // The leader reads the stored schedule and fires it: a run `every@<tick>` doubles 21.
    let fired = events
        .until(|seen| {
            seen.iter().any(|e| {
                e.run_id.as_str().starts_with("every@") && e.kind == EventKind::RunSucceeded
            })
        })
        .await
        .iter()
        .find(|e| e.run_id.as_str().starts_with("every@") && e.kind == EventKind::RunSucceeded)
        .cloned()
        .unwrap();
    assert_eq!(fired.body, json!({"again": 84}));

    let listed = stdout_json(&inqubo(
        &broker,
        &["--json", "schedule", "list", "doubling"],
    ));
    let names: Vec<(&str, &str)> = listed[0]["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["source"].as_str().unwrap()))
        .collect();
    assert_eq!(names, [("hourly", "code"), ("every", "stored")]);
    let text = inqubo(&broker, &["schedule", "list"]);
    assert!(text.status.success());
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("0 * * * *"),
        "{text:?}"
    );

    let removed = inqubo(&broker, &["schedule", "remove", "doubling", "every"]);
    assert!(removed.status.success(), "{removed:?}");
    let gone = inqubo(&broker, &["schedule", "remove", "doubling", "every"]);
    assert_eq!(gone.status.code(), Some(3), "{gone:?}");
    let in_code = inqubo(&broker, &["schedule", "remove", "doubling", "hourly"]);
    assert_eq!(in_code.status.code(), Some(1), "{in_code:?}");
    let listed = stdout_json(&inqubo(
        &broker,
        &["--json", "schedule", "list", "doubling"],
    ));
    assert_eq!(listed[0]["schedules"].as_array().unwrap().len(), 1);
    runner.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn trigger_with_a_priority_runs_in_its_class_lane() {
    let flow = Workflow::builder("lanes")
        .priorities(true)
        .start(Step::new("double", double))
        .then(Step::new("again", double))
        .build()
        .unwrap();
    let broker = TestBroker::new();
    let runner = broker.start_runner(&flow).await;
    let mut events = Events::subscribe(runner.client()).await;
    for class in ["high", "low"] {
        let started = stdout_json(&inqubo(
            &broker,
            &[
                "--json",
                "trigger",
                "lanes",
                "--priority",
                class,
                "--run-id",
                class,
                "--input",
                "3",
            ],
        ));
        assert_eq!(started["priority"], class);
        let end = run_event(&mut events, class, EventKind::RunSucceeded).await;
        assert_eq!(end.body, json!({"again": 12}), "{class}");
    }
    // The child takes the lane's copy of its input and ignores the `succeeded` event's: it
    // runs once. (The high run's events are all in by the time the low one has ended.)
    for class in ["high", "low"] {
        let trail = events.trail(class);
        let starts = trail.iter().filter(|e| *e == "again.started").count();
        assert_eq!(starts, 1, "{class}: {trail:?}");
    }
    let refused = inqubo(&broker, &["trigger", "lanes", "--priority", "urgent"]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    runner.shutdown().await.unwrap();
}
