//! What events do to the history, event by event, in the order (or disorder) a monitor may
//! receive them. Every scenario runs on SQLite and on PostgreSQL: the SQL is the same, the
//! databases are not.

use std::borrow::Cow;

use inqubo::LifecycleEvent;
use serde_json::{Value, json};
use sqlx::{AnyPool, any::AnyPoolOptions, migrate::Migrator};

use super::record;
use crate::history::{MIGRATOR, query};

/// A migrated, empty store; a PostgreSQL one is a database of its own, dropped with it.
struct Store {
    pool: AnyPool,
    database: Option<String>,
}

/// The PostgreSQL server tests may create databases on; `scripts/test.sh` sets it up.
fn postgres_admin_url() -> String {
    std::env::var("INQUBO_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

impl Store {
    async fn sqlite(migrator: &Migrator) -> Self {
        sqlx::any::install_default_drivers();
        // One connection: each connection to `:memory:` is a database of its own.
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        migrator.run(&pool).await.unwrap();
        Self {
            pool,
            database: None,
        }
    }

    async fn postgres(migrator: &Migrator) -> Self {
        use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};
        sqlx::any::install_default_drivers();
        let admin = postgres_admin_url();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let database = format!("inqubo_record_{:x}_{}", nanos, std::process::id());
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
        let pool = AnyPoolOptions::new()
            .max_connections(2)
            .connect(&format!("{base}/{database}"))
            .await
            .unwrap();
        let store = Self {
            pool,
            database: Some(database),
        };
        migrator.run(&store.pool).await.unwrap();
        store
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let Some(database) = self.database.take() else {
            return;
        };
        // Dropped on a runtime of its own: `drop` cannot await, and may run during a panic.
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
            eprintln!("could not drop a test database: {dropped:?}");
        }
    }
}

/// Runs each scenario once on SQLite and once on PostgreSQL: `<scenario>::sqlite` and
/// `<scenario>::postgres`.
macro_rules! on_both_stores {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test]
            async fn sqlite() {
                let store = super::Store::sqlite(&crate::history::MIGRATOR).await;
                super::$scenario(&store.pool).await;
            }

            #[tokio::test]
            async fn postgres() {
                let store = super::Store::postgres(&crate::history::MIGRATOR).await;
                super::$scenario(&store.pool).await;
            }
        }
    )*};
}

on_both_stores!(
    a_resumed_run_follows_its_latest_generation,
    a_late_event_of_an_older_generation_never_moves_the_status_back,
    an_ended_run_stays_ended_while_its_branches_report,
    a_cancelled_run_records_its_skipped_steps,
    a_run_first_seen_mid_way_is_created_and_completed,
    a_terminal_event_for_an_unknown_run_creates_it_as_ended,
    a_skipped_step_ends_a_run_whose_end_was_missed,
    an_attempt_row_never_mixes_two_generations,
);

/// An event of run `run` of workflow `wf`, as the monitor decodes it.
fn event(
    key: &str,
    run: &str,
    attempt: Option<u32>,
    generation: u32,
    body: Value,
) -> LifecycleEvent {
    LifecycleEvent::from_wire(
        &format!("wf.{key}"),
        Some(run),
        attempt,
        body.to_string().as_bytes(),
    )
    .unwrap()
    .with_generation(generation)
}

async fn feed(pool: &AnyPool, events: &[LifecycleEvent]) {
    for event in events {
        record(pool, event).await.unwrap();
    }
}

async fn detail(pool: &AnyPool, run: &str) -> Value {
    query::run_detail(pool, run)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("run {run} is not in the history"))
}

/// `step#attempt gN status` for every attempt, in the order `inqubo run` shows them.
fn attempts(detail: &Value) -> Vec<String> {
    detail["attempts"]
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

/// `gN status` for every generation, `gN -` for one the monitor never saw end.
fn generations(detail: &Value) -> Vec<String> {
    detail["generations"]
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

fn failed(step: &str, attempt: u32) -> Value {
    json!({"step": step, "error": "boom", "attempt": attempt, "reason": "fatal"})
}

async fn a_resumed_run_follows_its_latest_generation(pool: &AnyPool) {
    feed(
        pool,
        &[
            event("run.triggered", "r", None, 1, json!(4)),
            event("step.a.started", "r", Some(1), 1, json!({"attempt": 1})),
            event("step.a.failed", "r", Some(1), 1, failed("a", 1)),
            event("run.failed", "r", None, 1, failed("a", 1)),
        ],
    )
    .await;
    let first = detail(pool, "r").await;
    assert_eq!(first["status"], "failed");
    assert_eq!(first["outcome"]["step"], "a");
    assert!(first["finished_ms"].is_i64());

    feed(
        pool,
        &[event(
            "step.a.started",
            "r",
            Some(2),
            2,
            json!({"attempt": 2}),
        )],
    )
    .await;
    let resumed = detail(pool, "r").await;
    assert_eq!(resumed["status"], "running", "a resume reopens the run");
    assert_eq!(resumed["generation"], 2);
    assert_eq!(resumed["finished_ms"], Value::Null);
    assert_eq!(resumed["outcome"], Value::Null);
    assert_eq!(generations(&resumed), ["g1 failed", "g2 running"]);

    feed(
        pool,
        &[
            event("step.a.succeeded", "r", Some(2), 2, json!(8)),
            event("run.succeeded", "r", None, 2, json!({"a": 8})),
        ],
    )
    .await;
    let done = detail(pool, "r").await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["outcome"], json!({"a": 8}));
    assert_eq!(generations(&done), ["g1 failed", "g2 succeeded"]);
    assert_eq!(done["generations"][0]["outcome"]["error"], "boom");
    assert!(done["generations"][0]["ended_ms"].is_i64());
    assert!(done["generations"][1]["ended_ms"].is_i64());
    assert_eq!(attempts(&done), ["a#1 g1 failed", "a#2 g2 succeeded"]);
    assert_eq!(done["attempts"][0]["error"], "boom");
    assert_eq!(done["attempts"][0]["reason"], "fatal");
    assert_eq!(done["attempts"][1]["error"], Value::Null);
    assert_eq!(done["attempts"][1]["output"], 8);

    let page = query::list_runs(pool, &query::RunFilter::default(), 1, 50)
        .await
        .unwrap();
    assert_eq!(page["runs"][0]["generation"], 2);
    assert_eq!(page["counts"]["succeeded"], 1);
    assert_eq!(page["counts"]["failed"], 0);
}

async fn a_late_event_of_an_older_generation_never_moves_the_status_back(pool: &AnyPool) {
    feed(
        pool,
        &[
            event("step.a.failed", "r", Some(1), 1, failed("a", 1)),
            event("run.failed", "r", None, 1, failed("a", 1)),
            event("step.a.started", "r", Some(2), 2, json!({"attempt": 2})),
            // Generation 1 again, late (or redelivered) while generation 2 runs.
            event("run.failed", "r", None, 1, failed("a", 1)),
            event("step.b.retrying", "r", Some(1), 1, json!({"error": "late"})),
        ],
    )
    .await;
    let running = detail(pool, "r").await;
    assert_eq!(running["status"], "running");
    assert_eq!(running["generation"], 2);
    assert_eq!(running["finished_ms"], Value::Null);

    feed(
        pool,
        &[
            event("step.a.succeeded", "r", Some(2), 2, json!(1)),
            event("run.succeeded", "r", None, 2, json!({"a": 1})),
            event("run.failed", "r", None, 1, failed("a", 1)),
            event("step.a.failed", "r", Some(1), 1, failed("a", 1)),
            event("step.b.started", "r", Some(1), 1, json!({"attempt": 1})),
        ],
    )
    .await;
    let done = detail(pool, "r").await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["outcome"], json!({"a": 1}));
    assert_eq!(generations(&done), ["g1 failed", "g2 succeeded"]);
}

async fn an_ended_run_stays_ended_while_its_branches_report(pool: &AnyPool) {
    feed(
        pool,
        &[
            event("run.triggered", "r", None, 1, json!(1)),
            event("step.b.failed", "r", Some(1), 1, failed("b", 1)),
            event("run.failed", "r", None, 1, failed("b", 1)),
            // A branch that does not fail fast goes on after the run failed.
            event("step.c.started", "r", Some(1), 1, json!({"attempt": 1})),
            event("step.c.retrying", "r", Some(1), 1, json!({"error": "x"})),
            event("step.c.succeeded", "r", Some(2), 1, json!(2)),
            // A redelivered terminal event changes nothing.
            event("run.failed", "r", None, 1, failed("b", 1)),
        ],
    )
    .await;
    let run = detail(pool, "r").await;
    assert_eq!(run["status"], "failed");
    assert_eq!(run["outcome"]["step"], "b");
    assert_eq!(generations(&run), ["g1 failed"]);
    assert_eq!(
        attempts(&run),
        ["b#1 g1 failed", "c#1 g1 retrying", "c#2 g1 succeeded"]
    );
}

async fn a_cancelled_run_records_its_skipped_steps(pool: &AnyPool) {
    feed(
        pool,
        &[
            event("run.triggered", "r", None, 1, json!(1)),
            event("step.wait.started", "r", Some(1), 1, json!({"attempt": 1})),
            event("run.cancelled", "r", None, 1, json!({"reason": "stop"})),
            event("step.wait.succeeded", "r", Some(1), 1, json!(1)),
            event(
                "step.double.skipped",
                "r",
                Some(1),
                1,
                json!({"attempt": 1, "reason": "run_cancelled"}),
            ),
        ],
    )
    .await;
    feed(pool, &[event("run.triggered", "other", None, 1, json!(1))]).await;
    let run = detail(pool, "r").await;
    assert_eq!(run["status"], "cancelled");
    assert_eq!(run["outcome"], json!({"reason": "stop"}));
    assert_eq!(generations(&run), ["g1 cancelled"]);
    assert_eq!(
        attempts(&run),
        ["wait#1 g1 succeeded", "double#1 g1 skipped"]
    );
    assert_eq!(run["attempts"][1]["reason"], "run_cancelled");
    assert_eq!(
        run["attempts"][1]["input"],
        Value::Null,
        "no definition known"
    );

    let filter = query::RunFilter {
        status: "cancelled".to_owned(),
        ..query::RunFilter::default()
    };
    let page = query::list_runs(pool, &filter, 1, 50).await.unwrap();
    let ids: Vec<&str> = page["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["r"]);
    assert_eq!(page["counts"]["cancelled"], 1);
    assert_eq!(page["counts"]["running"], 1);
    assert_eq!(page["total"], 1);
}

async fn a_run_first_seen_mid_way_is_created_and_completed(pool: &AnyPool) {
    feed(
        pool,
        &[event(
            "step.b.started",
            "r",
            Some(1),
            1,
            json!({"attempt": 1}),
        )],
    )
    .await;
    let seen = detail(pool, "r").await;
    assert_eq!(
        seen["workflow"], "wf",
        "the workflow comes from the routing key"
    );
    assert_eq!(seen["status"], "running");
    assert_eq!(seen["input"], Value::Null);
    feed(
        pool,
        &[
            event("step.b.succeeded", "r", Some(1), 1, json!(3)),
            event("run.succeeded", "r", None, 1, json!({"b": 3})),
        ],
    )
    .await;
    let done = detail(pool, "r").await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["outcome"], json!({"b": 3}));
    assert_eq!(attempts(&done), ["b#1 g1 succeeded"]);

    // Seen first in a later generation: the earlier ones are listed, as never seen.
    feed(
        pool,
        &[event(
            "step.c.started",
            "late",
            Some(3),
            2,
            json!({"attempt": 3}),
        )],
    )
    .await;
    let late = detail(pool, "late").await;
    assert_eq!(late["generation"], 2);
    assert_eq!(generations(&late), ["g1 -", "g2 running"]);
}

async fn a_terminal_event_for_an_unknown_run_creates_it_as_ended(pool: &AnyPool) {
    feed(pool, &[event("run.failed", "r", None, 1, failed("x", 2))]).await;
    let run = detail(pool, "r").await;
    assert_eq!(run["workflow"], "wf");
    assert_eq!(run["status"], "failed");
    assert!(run["finished_ms"].is_i64());
    assert_eq!(run["outcome"]["step"], "x");
    assert_eq!(generations(&run), ["g1 failed"]);
    assert_eq!(attempts(&run), Vec::<String>::new());
}

async fn a_skipped_step_ends_a_run_whose_end_was_missed(pool: &AnyPool) {
    feed(
        pool,
        &[event(
            "step.b.skipped",
            "r",
            Some(1),
            1,
            json!({"attempt": 1, "reason": "run_cancelled"}),
        )],
    )
    .await;
    let run = detail(pool, "r").await;
    assert_eq!(run["status"], "cancelled");
    assert!(run["finished_ms"].is_i64(), "an ended run expires");
    assert_eq!(run["outcome"], Value::Null);
    assert_eq!(generations(&run), ["g1 cancelled"]);
    // The terminal event, when it comes after all, says how it ended.
    feed(
        pool,
        &[event(
            "run.cancelled",
            "r",
            None,
            1,
            json!({"reason": "stop"}),
        )],
    )
    .await;
    let run = detail(pool, "r").await;
    assert_eq!(run["status"], "cancelled");
    assert_eq!(run["outcome"], json!({"reason": "stop"}));

    // Skipped for a failed run, in a fail-fast workflow.
    feed(
        pool,
        &[
            event("step.a.started", "f", Some(1), 1, json!({"attempt": 1})),
            event(
                "step.c.skipped",
                "f",
                Some(2),
                1,
                json!({"attempt": 2, "reason": "run_failed"}),
            ),
        ],
    )
    .await;
    let run = detail(pool, "f").await;
    assert_eq!(run["status"], "failed");
    assert_eq!(attempts(&run), ["a#1 g1 started", "c#2 g1 skipped"]);
}

async fn an_attempt_row_never_mixes_two_generations(pool: &AnyPool) {
    // Attempt numbers go on across generations; should one come back in a later generation
    // all the same, the later attempt replaces the row rather than mixing with it.
    feed(
        pool,
        &[
            event("step.a.failed", "r", Some(1), 1, failed("a", 1)),
            event("step.a.succeeded", "r", Some(1), 2, json!(5)),
            // And the earlier generation's events, late, change nothing.
            event("step.a.failed", "r", Some(1), 1, failed("a", 1)),
        ],
    )
    .await;
    let run = detail(pool, "r").await;
    assert_eq!(attempts(&run), ["a#1 g2 succeeded"]);
    assert_eq!(run["attempts"][0]["error"], Value::Null);
    assert_eq!(run["attempts"][0]["reason"], Value::Null);
    assert_eq!(run["attempts"][0]["output"], 5);
}

/// A store the previous release wrote (migrations 1 and 2 only) is migrated in place: its
/// runs and attempts become generation 1, and its ended runs get their generation row.
async fn stores_of_the_previous_schema_migrate(store: Store) {
    let pool = &store.pool;
    for statement in [
        "INSERT INTO runs (workflow, run_id, status, created_ms, updated_ms, finished_ms, outcome, input)
         VALUES ('wf', 'old-failed', 'failed', 10, 30, 30, '{\"step\":\"a\"}', '1')",
        "INSERT INTO runs (workflow, run_id, status, created_ms, updated_ms)
         VALUES ('wf', 'old-running', 'running', 10, 20)",
        "INSERT INTO attempts (workflow, run_id, step, attempt, status, started_ms, finished_ms, error)
         VALUES ('wf', 'old-failed', 'a', 1, 'failed', 15, 25, 'boom')",
    ] {
        sqlx::query(statement).execute(pool).await.unwrap();
    }
    MIGRATOR.run(pool).await.unwrap();

    let failed = detail(pool, "old-failed").await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["generation"], 1);
    assert_eq!(generations(&failed), ["g1 failed"]);
    assert_eq!(failed["generations"][0]["ended_ms"], 30);
    assert_eq!(failed["generations"][0]["outcome"], json!({"step": "a"}));
    assert_eq!(attempts(&failed), ["a#1 g1 failed"]);
    let running = detail(pool, "old-running").await;
    assert_eq!(generations(&running), ["g1 running"]);

    // And the migrated store takes the events of a resume.
    feed(
        pool,
        &[
            event("step.a.succeeded", "old-failed", Some(2), 2, json!(2)),
            event("run.succeeded", "old-failed", None, 2, json!({"a": 2})),
        ],
    )
    .await;
    let resumed = detail(pool, "old-failed").await;
    assert_eq!(resumed["status"], "succeeded");
    assert_eq!(generations(&resumed), ["g1 failed", "g2 succeeded"]);
    assert_eq!(attempts(&resumed), ["a#1 g1 failed", "a#2 g2 succeeded"]);
}

/// The migrations of the release before run generations.
fn previous_schema() -> Migrator {
    Migrator {
        migrations: Cow::Owned(MIGRATOR.migrations[..2].to_vec()),
        ..Migrator::DEFAULT
    }
}

#[tokio::test]
async fn stores_of_the_previous_schema_migrate_in_sqlite() {
    stores_of_the_previous_schema_migrate(Store::sqlite(&previous_schema()).await).await;
}

#[tokio::test]
async fn stores_of_the_previous_schema_migrate_in_postgres() {
    stores_of_the_previous_schema_migrate(Store::postgres(&previous_schema()).await).await;
}
