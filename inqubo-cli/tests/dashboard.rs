//! The dashboard `inqubo monitor --listen` serves: its JSON API behind a bearer token, its
//! live event stream, its metrics, and its pages in a real browser (headless Chromium).

mod browser;

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use inqubo_core::{EventKind, Step, StepContext, StepError, Workflow};
use inqubo_testkit::{Events, TestBroker, run_id};
use serde_json::{Value, json};

const TOKEN: &str = "s3cret-token";

/// From this amount on, `reserve` waits until its run is cancelled (at most 30 s).
const HELD: u64 = 100;

async fn reserve(amount: u64, ctx: StepContext) -> Result<u64, StepError> {
    if amount >= HELD {
        let _ = tokio::time::timeout(Duration::from_secs(30), ctx.cancelled()).await;
    }
    Ok(amount)
}

/// Fails for good on odd amounts the first time, so that their inputs are parked; a replay or
/// a resume (attempt 2) goes through.
async fn charge(amount: u64, ctx: StepContext) -> Result<Value, StepError> {
    if amount % 2 == 1 && ctx.attempt == 1 {
        return Err(StepError::fatal(format!(
            "card declined for <b>{amount}</b>"
        )));
    }
    Ok(json!({"charged": amount, "note": "<script>alert(1)</script>"}))
}

fn shop() -> Workflow {
    Workflow::builder("shop")
        .start(Step::new("reserve", reserve))
        .then(Step::new("charge", charge))
        .build()
        .unwrap()
}

/// A running `inqubo monitor --listen` and where it serves.
struct Monitor {
    child: Child,
    base: String,
    store_dir: PathBuf,
}

impl Monitor {
    fn start(broker: &TestBroker) -> Self {
        let store_dir = std::env::temp_dir().join(format!(
            "inqubo-dashboard-{}-{}",
            std::process::id(),
            broker.prefix()
        ));
        std::fs::create_dir_all(&store_dir).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_inqubo"))
            .args([
                "--amqp-url",
                broker.url(),
                "--prefix",
                broker.prefix(),
                "monitor",
            ])
            .arg("--store")
            .arg(format!("sqlite://{}/history.db", store_dir.display()))
            .args(["--listen", "127.0.0.1:0", "--token", TOKEN])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let base = loop {
            let line = lines
                .next()
                .expect("the monitor says where it serves")
                .unwrap();
            if let Some(rest) = line.strip_prefix("dashboard on ") {
                break rest
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .trim_end_matches('/')
                    .to_owned();
            }
        };
        // Keep reading, so that the monitor never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Self {
            child,
            base,
            store_dir,
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.store_dir);
    }
}

/// A `reqwest` client that sends the token.
fn authorized() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {TOKEN}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

async fn get(http: &reqwest::Client, url: &str) -> Value {
    let response = http.get(url).send().await.unwrap();
    assert!(
        response.status().is_success(),
        "GET {url}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

/// Reads the run from the API until `done` holds: the monitor writes asynchronously, and there
/// is no event for "written to the store".
async fn run_when(monitor: &Monitor, run_id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let http = authorized();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = http
            .get(format!("{}/api/runs/{run_id}", monitor.base))
            .send()
            .await
            .unwrap();
        if response.status().is_success() {
            let run: Value = response.json().await.unwrap();
            if done(&run) {
                return run;
            }
        }
        assert!(
            Instant::now() < deadline,
            "run {run_id} never reached the expected state"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for run `run`'s event of `kind` (succeeded, failed, cancelled).
async fn run_event(events: &mut Events, run: &str, kind: EventKind) -> inqubo::LifecycleEvent {
    let is = |e: &inqubo::LifecycleEvent| e.run_id.as_str() == run && e.kind == kind;
    let seen = events.until(|seen| seen.iter().any(is)).await;
    seen.iter().find(|e| is(e)).cloned().unwrap()
}

/// A shop runner, a monitor serving the dashboard, and two recorded runs: `order-paid-2`
/// succeeded, `order-declined-3` failed with its input parked.
struct Shop {
    broker: TestBroker,
    runner: inqubo::Runner,
    monitor: Monitor,
    events: Events,
}

impl Shop {
    async fn with_two_runs() -> Self {
        let broker = TestBroker::new();
        let runner = broker.start_runner(&shop()).await;
        let monitor = Monitor::start(&broker);
        let mut events =
            Events::subscribe_to(runner.client(), Some(runner.workflow().name())).await;
        runner
            .trigger(run_id("order-paid-2"), &2_u64)
            .await
            .unwrap();
        runner
            .trigger(run_id("order-declined-3"), &3_u64)
            .await
            .unwrap();
        events
            .wait_for("order-paid-2", "charge", EventKind::Succeeded)
            .await;
        events
            .wait_for("order-declined-3", "charge", EventKind::Failed)
            .await;
        run_when(&monitor, "order-paid-2", |r| r["status"] == "succeeded").await;
        run_when(&monitor, "order-declined-3", |r| r["status"] == "failed").await;
        Self {
            broker,
            runner,
            monitor,
            events,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_api_error_is_a_json_body_with_the_documented_status() {
    let broker = TestBroker::new();
    let _runner = broker.start_runner(&shop()).await;
    let monitor = Monitor::start(&broker);
    let base = &monitor.base;
    let http = authorized();
    let purge = format!("{base}/api/workflows/shop/parked/purge");
    let cases = [
        (http.get(format!("{base}/api")), 404),
        (http.get(format!("{base}/api/nothing/here")), 404),
        (http.get(format!("{base}/api/runs?status=lost")), 400),
        (http.get(format!("{base}/api/runs?page=first")), 400),
        (http.get(format!("{base}/api/runs/never-ran")), 404),
        (http.delete(format!("{base}/api/runs")), 405),
        (http.post(&purge).form(&[("all", "true")]), 415),
        (
            http.post(&purge)
                .header("content-type", "application/json")
                .body("{not json"),
            400,
        ),
        (http.post(&purge).json(&serde_json::json!({})), 400),
        (reqwest::Client::new().get(format!("{base}/api/runs")), 401),
    ];
    for (request, status) in cases {
        let response = request.send().await.unwrap();
        let url = response.url().to_string();
        assert_eq!(response.status(), status, "{url}");
        let kind = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(kind.starts_with("application/json"), "{url}: {kind}");
        let body: Value = response.json().await.unwrap();
        let error = body["error"].as_str().unwrap_or_default();
        assert!(!error.is_empty(), "{url}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn api_serves_runs_workflows_parked_and_metrics_behind_its_token() {
    let Shop {
        broker: _broker,
        runner,
        monitor,
        ..
    } = Shop::with_two_runs().await;
    let paid = run_when(&monitor, "order-paid-2", |r| r["status"] == "succeeded").await;
    let base = &monitor.base;
    let http = authorized();

    let refused = reqwest::get(format!("{base}/api/runs")).await.unwrap();
    assert_eq!(refused.status(), 401, "the API needs the token");
    let wrong = reqwest::Client::new()
        .get(format!("{base}/api/runs"))
        .bearer_auth("guess")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let page = reqwest::get(format!("{base}/")).await.unwrap();
    assert_eq!(
        page.status(),
        200,
        "the page shell holds no data and needs no token"
    );
    assert!(page.text().await.unwrap().contains("/assets/app.js"));

    let all = get(&http, &format!("{base}/api/runs")).await;
    assert_eq!(all["total"], 2);
    assert_eq!(all["counts"]["succeeded"], 1);
    assert_eq!(all["counts"]["failed"], 1);
    let failed = get(&http, &format!("{base}/api/runs?status=failed")).await;
    let ids: Vec<&str> = failed["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["order-declined-3"]);
    let searched = get(&http, &format!("{base}/api/runs?q=paid")).await;
    assert_eq!(searched["runs"][0]["run_id"], "order-paid-2");
    assert_eq!(searched["total"], 1);
    let second = get(&http, &format!("{base}/api/runs?per_page=1&page=2")).await;
    assert_eq!(second["runs"].as_array().unwrap().len(), 1);
    assert_eq!(second["total"], 2);
    let bad_status = http
        .get(format!("{base}/api/runs?status=lost"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_status.status(), 400);

    assert_eq!(paid["definition"]["name"], "shop");
    let steps: Vec<String> = paid["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            format!(
                "{} {}",
                a["step"].as_str().unwrap(),
                a["status"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(steps, ["reserve succeeded", "charge succeeded"]);
    assert_eq!(paid["attempts"][1]["input"], 2);
    let missing = http
        .get(format!("{base}/api/runs/nobody"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let stats = get(&http, &format!("{base}/api/workflows/shop/stats")).await;
    let sum = |field: &str| -> u64 {
        stats[field]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_u64().unwrap())
            .sum()
    };
    assert_eq!(stats["bucket_ms"], 60_000);
    assert_eq!(stats["started"].as_array().unwrap().len(), 60);
    assert_eq!((sum("started"), sum("finished"), sum("failed")), (2, 2, 1));
    assert_eq!(stats["failure_rate"], 0.5);
    let steps: Vec<&str> = stats["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["charge", "reserve"]);
    assert!(stats["steps"][1]["p99_ms"].as_i64().unwrap() >= 0);
    let day = get(&http, &format!("{base}/api/workflows/shop/stats?window=1d")).await;
    assert_eq!(day["bucket_ms"], 900_000);
    assert_eq!(day["started"].as_array().unwrap().len(), 96);
    let week = http
        .get(format!("{base}/api/workflows/shop/stats?window=1w"))
        .send()
        .await
        .unwrap();
    assert_eq!(week.status(), 400);

    let workflows = get(&http, &format!("{base}/api/workflows")).await;
    let shop = &workflows["workflows"][0];
    assert_eq!(shop["workflow"], "shop");
    assert_eq!(shop["parked"], 1);
    assert_eq!(shop["steps"][1]["step"], "charge");
    assert_eq!(shop["steps"][1]["succeeded"], 1);
    assert_eq!(shop["steps"][1]["failed"], 1);
    assert_eq!(shop["steps"][1]["failure_rate"], 0.5);
    assert_eq!(shop["steps"][1]["consumers"], 1);

    let parked = get(&http, &format!("{base}/api/workflows/shop/parked")).await;
    assert_eq!(parked["messages"][0]["run_id"], "order-declined-3");
    assert_eq!(parked["messages"][0]["reason"], "fatal");
    assert_eq!(parked["messages"][0]["generation"], 1);
    assert_eq!(
        parked["messages"][0]["message_id"],
        "parked:order-declined-3:shop:reserve:succeeded:1"
    );
    let replay = |body: Value| {
        http.post(format!("{base}/api/workflows/shop/parked/replay"))
            .json(&body)
            .send()
    };
    let by_position = replay(json!({"number": 1})).await.unwrap();
    assert_eq!(
        by_position.status(),
        400,
        "positions shift; no replay by number"
    );
    let other_run = replay(json!({"run_id": "someone-else"})).await.unwrap();
    assert_eq!(other_run.status(), 404);
    let error: Value = other_run.json().await.unwrap();
    assert_eq!(
        error["error"],
        "no parked message of run `someone-else` in workflow `shop`; nothing was replayed"
    );
    let other_step = replay(json!({"run_id": "order-declined-3", "step": "reserve"}))
        .await
        .unwrap();
    assert_eq!(other_step.status(), 404);
    let unknown_id = replay(json!({"message_id": "parked:nothing"}))
        .await
        .unwrap();
    assert_eq!(unknown_id.status(), 404);
    let after = get(&http, &format!("{base}/api/workflows/shop/parked")).await;
    assert_eq!(after["messages"], parked["messages"], "nothing moved");
    let unasked = http
        .post(format!("{base}/api/workflows/shop/parked/purge"))
        .json(&json!({"all": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(unasked.status(), 400);
    let form = http
        .post(format!("{base}/api/workflows/shop/parked/purge"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("all=true")
        .send()
        .await
        .unwrap();
    assert!(
        form.status().is_client_error(),
        "a cross-site form cannot purge"
    );

    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("inqubo_steps_failed_total") && l.contains("step=\"charge\""))
        .unwrap_or_else(|| panic!("no failed-step counter in:\n{metrics}"));
    assert!(line.ends_with(" 1"), "{line}");
    assert!(
        metrics.contains("inqubo_step_duration_seconds_bucket"),
        "{metrics}"
    );

    // The live stream tells of a new run's events as they are recorded.
    let mut stream = http.get(format!("{base}/api/events")).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    runner
        .trigger(run_id("order-live-4"), &4_u64)
        .await
        .unwrap();
    let mut received = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !received.contains("\"run_id\":\"order-live-4\"") {
        let chunk = tokio::time::timeout_at(deadline.into(), stream.chunk())
            .await
            .unwrap_or_else(|_| panic!("no live event for order-live-4; got:\n{received}"))
            .unwrap()
            .expect("the stream stays open");
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(received.contains("event: lifecycle"), "{received}");
    runner.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn api_cancels_a_running_run_and_resumes_a_failed_one() {
    let Shop {
        broker: _broker,
        runner,
        monitor,
        mut events,
    } = Shop::with_two_runs().await;
    let base = &monitor.base;
    let http = authorized();
    runner
        .trigger(run_id("order-held-100"), &HELD)
        .await
        .unwrap();
    events
        .wait_for("order-held-100", "reserve", EventKind::Started)
        .await;
    let post = |path: &str, body: Value| {
        http.post(format!("{base}/api/runs/{path}"))
            .json(&body)
            .send()
    };
    async fn answer(response: reqwest::Response) -> (u16, Value) {
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    let no_token = reqwest::Client::new()
        .post(format!("{base}/api/runs/order-held-100/cancel"))
        .json(&json!({"workflow": "shop"}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), 401, "cancelling needs the token");
    let form = http
        .post(format!("{base}/api/runs/order-held-100/cancel"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("workflow=shop")
        .send()
        .await
        .unwrap();
    assert!(
        form.status().is_client_error(),
        "a cross-site form cannot cancel"
    );

    let cancelled = answer(
        post(
            "order-held-100/cancel",
            json!({"workflow": "shop", "reason": "customer called"}),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(
        cancelled,
        (
            200,
            json!({"run_id": "order-held-100", "workflow": "shop", "cancelled": true,
                   "reason": "customer called"})
        )
    );
    let end = run_event(&mut events, "order-held-100", EventKind::RunCancelled).await;
    assert_eq!(end.body["reason"], "customer called");
    // Without a workflow in the body, the history names it.
    let again = answer(post("order-held-100/cancel", json!({})).await.unwrap()).await;
    assert_eq!(
        again,
        (
            409,
            json!({"error": "run order-held-100 had already been cancelled; nothing changed"})
        )
    );
    let paid = answer(post("order-paid-2/cancel", json!({})).await.unwrap()).await;
    assert_eq!(
        paid,
        (
            409,
            json!({"error": "run order-paid-2 had already succeeded; nothing changed"})
        )
    );
    let bad_name = answer(
        post("order-paid-2/cancel", json!({"workflow": "no such"}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(bad_name.0, 400, "{}", bad_name.1);

    let resumed = answer(
        post("order-declined-3/resume", json!({"workflow": "shop"}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        resumed,
        (
            200,
            json!({"run_id": "order-declined-3", "workflow": "shop", "generation": 2, "inputs": 1})
        )
    );
    let charged = events
        .wait_for("order-declined-3", "charge", EventKind::Succeeded)
        .await;
    assert_eq!(charged.attempt, Some(2), "the next attempt");
    run_event(&mut events, "order-declined-3", EventKind::RunSucceeded).await;
    run_when(&monitor, "order-declined-3", |r| r["status"] == "succeeded").await;
    let nothing = answer(post("order-declined-3/resume", json!({})).await.unwrap()).await;
    assert_eq!(nothing.0, 404);
    assert_eq!(
        nothing.1["error"],
        "run `order-declined-3` has no parked input to resume (was it failed, and not resumed already?)"
    );
    let unknown = answer(post("nobody/resume", json!({})).await.unwrap()).await;
    assert_eq!(
        unknown,
        (
            404,
            json!({"error": "no announced workflow has parked inputs of run `nobody`; name its workflow with \"workflow\" in the request"})
        )
    );
    runner.shutdown().await.unwrap();
}

fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots")
}

#[tokio::test(flavor = "multi_thread")]
async fn browser_shows_runs_replays_resumes_and_cancels() {
    let Shop {
        broker: _broker,
        runner,
        monitor,
        mut events,
    } = Shop::with_two_runs().await;
    let base = monitor.base.clone();
    let shots = screenshot_dir();
    let mut browser = browser::Browser::launch().await;

    // The runs list, with the token given once in the fragment.
    browser.open(&format!("{base}/#token={TOKEN}")).await;
    browser
        .wait_until(
            "document.querySelectorAll('[data-run]').length === 2",
            "two runs",
        )
        .await;
    let statuses = browser
        .eval("[...document.querySelectorAll('[data-run] [data-status]')].map(s => s.dataset.status).sort().join(',')")
        .await;
    assert_eq!(statuses, "failed,succeeded");
    // A histogram of the shown runs' durations: both finished.
    browser
        .wait_until(
            "document.querySelector('[data-histogram]')?.dataset.histogram === '2'",
            "the durations histogram",
        )
        .await;
    browser.screenshot(&shots.join("runs.png")).await;

    // A run page: the graph coloured by state, the error shown as text, not markup.
    browser.open(&format!("{base}/runs/order-declined-3")).await;
    browser
        .wait_until(
            "document.querySelector('#run-status [data-status]').dataset.status === 'failed'",
            "a failed run",
        )
        .await;
    let states = browser
        .eval("[...document.querySelectorAll('svg [data-step]')].map(g => g.dataset.step + '=' + g.dataset.state).join(',')")
        .await;
    assert_eq!(states, "reserve=succeeded,charge=failed");
    let error = browser
        .eval("document.querySelector('.error-text').textContent")
        .await;
    assert_eq!(error, "card declined for <b>3</b>");
    assert_eq!(
        browser
            .eval("document.querySelectorAll('main b, main script').length")
            .await,
        0
    );
    browser.screenshot(&shots.join("run-failed.png")).await;

    browser.open(&format!("{base}/runs/order-paid-2")).await;
    browser
        .wait_until(
            "document.querySelector('#run-status [data-status]').dataset.status === 'succeeded'",
            "a succeeded run",
        )
        .await;
    browser
        .eval("document.querySelectorAll('details').forEach(d => d.open = true)")
        .await;
    browser.screenshot(&shots.join("run.png")).await;

    browser.open(&format!("{base}/workflows")).await;
    browser
        .wait_until(
            "document.querySelector('[data-workflow=\"shop\"]')",
            "the shop workflow",
        )
        .await;
    // Its charts, drawn from the history: runs per minute, failure rate, step durations.
    browser
        .wait_until(
            "document.querySelectorAll('[data-charts=\"shop\"] .chart canvas').length === 3 && document.querySelectorAll('[data-charts=\"shop\"] table.percentiles tbody tr').length === 2",
            "the workflow's three charts and its percentiles",
        )
        .await;
    let titles = browser
        .eval("[...document.querySelectorAll('[data-charts=\"shop\"] .u-title')].map(t => t.textContent).join('|')")
        .await;
    assert_eq!(
        titles,
        "Runs per minute|Failed runs (50.0 %)|Step duration, median"
    );
    browser.screenshot(&shots.join("workflows.png")).await;
    browser.open(&format!("{base}/workflows?window=1d")).await;
    browser
        .wait_until(
            "document.querySelectorAll('[data-charts=\"shop\"] .chart canvas').length === 3 && document.querySelector('.counts a.current')?.textContent === 'last day'",
            "the last day's charts",
        )
        .await;

    // A second declined order, so that the parked page lists two messages.
    runner
        .trigger(run_id("order-declined-5"), &5_u64)
        .await
        .unwrap();
    events
        .wait_for("order-declined-5", "charge", EventKind::Failed)
        .await;
    run_when(&monitor, "order-declined-5", |r| r["status"] == "failed").await;

    // The parked page: "replay all" asks first; "replay" on one message does not, and sends
    // back that message only (addressed by its message id).
    browser.open(&format!("{base}/parked?workflow=shop")).await;
    browser
        .wait_until(
            "document.querySelectorAll('[data-parked] [data-replay]').length === 2",
            "two parked messages",
        )
        .await;
    browser.screenshot(&shots.join("parked.png")).await;
    let asked = browser
        .eval("window.asked = []; window.confirm = q => { window.asked.push(q); return false; }; document.querySelector('[data-replay-all]').click(); window.asked.length")
        .await;
    assert_eq!(asked, 1, "replaying all asks for confirmation");
    browser
        .eval("document.querySelector('[data-parked-run=\"order-declined-3\"] [data-replay]').click()")
        .await;
    let notice = browser
        .wait_until("document.getElementById('notice').hidden ? null : document.getElementById('notice').textContent", "the replay's result")
        .await;
    assert_eq!(notice, "replayed 1 message(s)");
    assert_eq!(
        browser.eval("window.asked.length").await,
        1,
        "one message replays without asking"
    );
    events
        .wait_for("order-declined-3", "charge", EventKind::Succeeded)
        .await;
    let left = browser
        .wait_until(
            "document.querySelectorAll('[data-parked]').length === 1 ? document.querySelector('[data-parked]').dataset.parkedRun : null",
            "one parked message left",
        )
        .await;
    assert_eq!(left, "order-declined-5", "the other message stays parked");

    // Live: the run page of the replayed run turns green without a reload.
    browser.open(&format!("{base}/runs/order-declined-3")).await;
    browser
        .wait_until(
            "document.querySelector('#run-status [data-status]').dataset.status === 'succeeded'",
            "the replayed run succeeded",
        )
        .await;

    // A failed run's page resumes it.
    browser.open(&format!("{base}/runs/order-declined-5")).await;
    browser
        .wait_until("document.querySelector('[data-resume]')", "a resume button")
        .await;
    assert_eq!(
        browser
            .eval("document.querySelectorAll('[data-cancel]').length")
            .await,
        0,
        "a failed run cannot be cancelled"
    );
    browser
        .eval("document.querySelector('[data-resume]').click()")
        .await;
    let notice = browser
        .wait_until(
            "document.getElementById('notice').textContent.startsWith('run order-declined-5') ? document.getElementById('notice').textContent : null",
            "the resume's result",
        )
        .await;
    assert_eq!(
        notice,
        "run order-declined-5 resumed as generation 2: 1 input(s) sent back to their steps"
    );
    browser
        .wait_until(
            "document.querySelector('#run-status [data-status]').dataset.status === 'succeeded' && !document.querySelector('[data-resume]')",
            "the resumed run succeeded",
        )
        .await;

    // A running run's page cancels it, once confirmed.
    runner
        .trigger(run_id("order-held-100"), &HELD)
        .await
        .unwrap();
    events
        .wait_for("order-held-100", "reserve", EventKind::Started)
        .await;
    browser.open(&format!("{base}/runs/order-held-100")).await;
    browser
        .wait_until("document.querySelector('[data-cancel]')", "a cancel button")
        .await;
    let asked = browser
        .eval("window.asked = []; window.confirm = q => { window.asked.push(q); return window.asked.length > 1; }; document.querySelector('[data-cancel]').click(); window.asked.length")
        .await;
    assert_eq!(asked, 1, "cancelling asks for confirmation");
    browser
        .eval("document.querySelector('[data-cancel]').click()")
        .await;
    let notice = browser
        .wait_until(
            "document.getElementById('notice').textContent.startsWith('run order-held-100') ? document.getElementById('notice').textContent : null",
            "the cancel's result",
        )
        .await;
    assert_eq!(notice, "run order-held-100 cancelled");
    let end = run_event(&mut events, "order-held-100", EventKind::RunCancelled).await;
    assert_eq!(end.body["reason"], "cancelled from the dashboard");
    browser
        .wait_until(
            "!document.querySelector('[data-cancel]')",
            "no cancel button on an ended run",
        )
        .await;
    eprintln!("screenshots in {}", shots.display());
    runner.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn browser_shows_a_map_as_one_node_with_its_counts() {
    async fn list(n: u64, _: StepContext) -> Result<Vec<u64>, StepError> {
        Ok((0..n).collect())
    }
    async fn resize(x: u64, _: StepContext) -> Result<u64, StepError> {
        if x == 3 {
            return Err(StepError::fatal("photo 3 is corrupt"));
        }
        Ok(x)
    }
    async fn index(v: Vec<u64>, _: StepContext) -> Result<usize, StepError> {
        Ok(v.len())
    }
    let broker = TestBroker::new();
    let flow = Workflow::builder("album")
        .fail_fast(false)
        .start(Step::new("list", list))
        .map(Step::new("resize", resize))
        .reduce(Step::new("index", index))
        .build()
        .unwrap();
    let runner = broker.start_runner(&flow).await;
    let monitor = Monitor::start(&broker);
    runner.trigger(run_id("album-6"), &6_u64).await.unwrap();
    let run = run_when(&monitor, "album-6", |r| {
        r["status"] == "failed" && r["maps"][0]["succeeded"] == 5 && r["maps"][0]["failed"] == 1
    })
    .await;
    assert_eq!(run["maps"][0]["elements"], 6);

    let mut browser = browser::Browser::launch().await;
    browser
        .open(&format!("{}/runs/album-6#token={TOKEN}", monitor.base))
        .await;
    let node = browser
        .wait_until(
            "document.querySelector('svg [data-step=\"resize\"]')?.textContent.includes('5/6') ? document.querySelector('svg [data-step=\"resize\"] text').textContent : null",
            "the map's node with its counts",
        )
        .await;
    assert_eq!(node, "resize (map) 5/6 ✗1");
    let states = browser
        .eval("[...document.querySelectorAll('svg [data-step]')].map(g => g.dataset.step + '=' + g.dataset.state).join(',')")
        .await;
    assert_eq!(states, "list=succeeded,resize=failed,index=pending");
    let counts = browser
        .eval("[...document.querySelectorAll('[data-map=\"resize\"] [data-count]')].map(c => c.dataset.count + '=' + c.textContent).join(',')")
        .await;
    assert_eq!(
        counts,
        "elements=6,succeeded=5,running=0,failed=1,skipped=0"
    );
    browser
        .screenshot(&screenshot_dir().join("run-map.png"))
        .await;
    runner.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn browser_lists_schedules_with_next_fire_times_and_last_runs() {
    let broker = TestBroker::new();
    let runner = broker
        .runner(&shop())
        .schedule(
            inqubo::Schedule::cron("every-second", "* * * * * *")
                .unwrap()
                .with_input(&2_u64)
                .unwrap(),
        )
        .connect()
        .await
        .unwrap();
    let monitor = Monitor::start(&broker);
    // The registry may not count the runner's announcement at once: try a few times.
    let mut added = None;
    for _ in 0..20 {
        let output = Command::new(env!("CARGO_BIN_EXE_inqubo"))
            .args(["--amqp-url", broker.url(), "--prefix", broker.prefix()])
            .args([
                "schedule",
                "add",
                "shop",
                "nightly",
                "0 2 * * *",
                "--time-zone",
                "Europe/Berlin",
            ])
            .output()
            .unwrap();
        if output.status.success() {
            added = Some(output);
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(added.is_some(), "inqubo schedule add never succeeded");

    let mut browser = browser::Browser::launch().await;
    browser
        .open(&format!("{}/schedules#token={TOKEN}", monitor.base))
        .await;
    browser
        .wait_until(
            "document.querySelector('[data-schedules]') ? true : null",
            "the schedules page, the token taken",
        )
        .await;
    // Reloaded until the history holds a run of the every-second schedule.
    let mut found = Value::Null;
    for _ in 0..60 {
        browser.open(&format!("{}/schedules", monitor.base)).await;
        found = browser
            .wait_until(
                "document.querySelector('[data-schedule=\"every-second\"] [data-last-runs]') ? document.querySelector('[data-schedule=\"every-second\"] [data-last-runs]').dataset.lastRuns : null",
                "the schedules table",
            )
            .await;
        if found != "0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_ne!(found, "0", "the every-second schedule's runs are listed");
    let rows = browser
        .eval("[...document.querySelectorAll('[data-schedules=\"shop\"] [data-schedule]')].map(r => r.dataset.schedule + ':' + r.children[1].textContent + ':' + r.querySelector('[data-next]').dataset.next).join(',')")
        .await;
    assert_eq!(rows, "every-second:code:3,nightly:stored:3");
    let first_run = browser
        .eval("document.querySelector('[data-schedule=\"every-second\"] [data-last-runs] a').textContent")
        .await;
    assert!(
        first_run.as_str().unwrap().starts_with("every-second@"),
        "{first_run}"
    );
    browser
        .screenshot(&screenshot_dir().join("schedules.png"))
        .await;
    runner.shutdown().await.unwrap();
}
