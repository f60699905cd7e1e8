//! Run history: `inqubo monitor` writes it, `inqubo runs` and `inqubo run` read it.
//!
//! The monitor consumes every step event and every run end through a durable queue of its own,
//! `<prefix>.monitor` (single active consumer: start several monitors, one works, the others
//! stand by), and records runs and attempts in SQLite (`sqlite://inqubo.db`, the default) or
//! PostgreSQL (`postgres://...`). Migrations run at start.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use futures_util::StreamExt;
use inqubo::protocol::{RoutingKey, argument};
use lapin::{
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};
use sqlx::{AnyPool, migrate::Migrator};

pub(crate) mod query;
mod record;

use record::{expire, record};

use crate::broker::Context;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// Opens (and creates, for SQLite) the store and brings its schema up to date.
pub(crate) async fn open(store: &str) -> anyhow::Result<AnyPool> {
    sqlx::any::install_default_drivers();
    let url = if store.starts_with("sqlite:") && !store.contains("mode=") {
        format!(
            "{store}{}mode=rwc",
            if store.contains('?') { "&" } else { "?" }
        )
    } else {
        store.to_owned()
    };
    let pool = AnyPool::connect(&url)
        .await
        .with_context(|| format!("cannot open the store {store}"))?;
    MIGRATOR
        .run(&pool)
        .await
        .context("cannot migrate the store")?;
    Ok(pool)
}

/// How `inqubo monitor` runs.
#[derive(Debug)]
pub(crate) struct MonitorOptions {
    /// The store URL.
    pub(crate) store: String,
    /// How long finished runs are kept.
    pub(crate) retention: Duration,
    /// Where to serve the dashboard, its API and `/metrics`; none when `None`.
    pub(crate) listen: Option<std::net::SocketAddr>,
    /// The bearer token the API asks for, if any.
    pub(crate) token: Option<String>,
    /// Serve peers on other machines without a token (`--allow-network-without-token`).
    pub(crate) open_to_network: bool,
    /// The monitor queue's `x-max-length` (`--max-backlog`).
    pub(crate) max_backlog: u32,
}

/// The events the monitor's queue holds at most by default: a few hours of a busy fleet, a
/// few hundred MB of the broker's disk.
pub(crate) const DEFAULT_MAX_BACKLOG: u32 = 1_000_000;

/// `inqubo monitor`: consumes events into the store until Ctrl-C, and serves the dashboard
/// when asked to.
pub(crate) async fn monitor(context: &Context, options: MonitorOptions) -> anyhow::Result<()> {
    let MonitorOptions {
        store,
        retention,
        listen,
        token,
        open_to_network,
        max_backlog,
    } = options;
    // Refused before anything is opened or bound.
    if let Some(address) = listen {
        crate::dashboard::check_listen(address, token.is_some(), open_to_network)
            .map_err(|refusal| anyhow::anyhow!(refusal))?;
    }
    let store = store.as_str();
    let pool = open(store).await?;
    let (live, _) = tokio::sync::broadcast::channel::<std::sync::Arc<str>>(1024);
    let topology = context.topology()?;
    let (connection, channel) = context.channel().await?;
    let queue = topology.monitor_queue();
    let queue = queue.as_str();
    let mut args = topology.durable_queue_args();
    args.insert(
        argument::SINGLE_ACTIVE_CONSUMER.into(),
        AMQPValue::Boolean(true),
    );
    // Bounded, dropping the oldest: a monitor left stopped loses history, never the broker's
    // memory or disk. (Refusing new events instead would refuse the runners' publishes.)
    args.insert(
        argument::MAX_LENGTH.into(),
        AMQPValue::LongLongInt(i64::from(max_backlog)),
    );
    channel
        .exchange_declare(
            topology.exchange().into(),
            lapin::ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(queue.into(), QueueDeclareOptions::durable(), args)
        .await?;
    // Triggers are not bound: a monitor bound to them would make triggers of unknown
    // workflows routable, hiding `Error::Unroutable` from callers.
    for binding in RoutingKey::observed_events(None) {
        channel
            .queue_bind(
                queue.into(),
                topology.exchange().into(),
                binding.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    let mut known = std::collections::BTreeSet::new();
    follow_triggers(context, &pool, &channel, queue, &mut known).await?;
    channel.basic_qos(200, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    eprintln!(
        "monitoring prefix {} into {} (Ctrl-C stops)",
        context.prefix,
        inqubo::redact_url(store)
    );
    if let Some(address) = listen {
        let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets(inqubo::STEP_DURATION_BUCKETS)?
            .install_recorder()
            .context("cannot install the metrics recorder")?;
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address}"))?;
        let bound = listener.local_addr()?;
        eprintln!("dashboard on http://{bound}/ (API under /api, metrics at /metrics)");
        let state = crate::dashboard::State::new(
            context.clone(),
            pool.clone(),
            live.clone(),
            metrics,
            token,
            open_to_network,
        );
        tokio::spawn(async move {
            if let Err(error) = crate::dashboard::serve(listener, state).await {
                eprintln!("the dashboard stopped: {error:#}");
            }
        });
    }
    let mut sweep = tokio::time::interval(Duration::from_secs(30));
    loop {
        let delivery = tokio::select! {
            delivery = consumer.next() => delivery,
            _ = sweep.tick() => {
                follow_triggers(context, &pool, &channel, queue, &mut known).await?;
                let expired = expire(&pool, retention).await?;
                if expired > 0 {
                    eprintln!("retention: deleted {expired} finished run(s)");
                }
                continue;
            }
            _ = tokio::signal::ctrl_c() => break,
        };
        let Some(delivery) = delivery else {
            anyhow::bail!("the monitor's consumer stopped (connection lost?)");
        };
        let delivery = delivery?;
        if let Ok(event) = inqubo::protocol::event_from_delivery(&delivery) {
            // Stored before acknowledged: a crash replays the event, and recording is idempotent.
            let took = record(&pool, &event).await?;
            crate::metric::observe(&event, took);
            if live.receiver_count() > 0 {
                let _ = live.send(crate::dashboard::event_json(&event).into());
            }
        }
        delivery.ack(BasicAckOptions::default()).await?;
    }
    let _ = connection.close(200, "bye".into()).await;
    Ok(())
}

/// Binds the monitor's queue to the triggers of every workflow runners announced, and keeps
/// their definitions in the store. Only announced workflows are bound, so that triggers of
/// unknown workflows stay unroutable and their callers still get the error.
async fn follow_triggers(
    context: &Context,
    pool: &AnyPool,
    channel: &lapin::Channel,
    queue: &str,
    known: &mut std::collections::BTreeSet<String>,
) -> anyhow::Result<()> {
    let topology = context.topology()?;
    for (name, definition) in crate::workflows::announced(context).await? {
        sqlx::query(
            "INSERT INTO workflows (workflow, definition, seen_ms) VALUES ($1, $2, $3)
             ON CONFLICT (workflow) DO UPDATE SET definition = excluded.definition, seen_ms = excluded.seen_ms",
        )
        .bind(name.as_str())
        .bind(serde_json::to_string(&definition)?)
        .bind(now_ms())
        .execute(pool)
        .await?;
        if known.insert(name.clone()) {
            channel
                .queue_bind(
                    queue.into(),
                    topology.exchange().into(),
                    RoutingKey::run_triggered(&definition.name).as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
    }
    Ok(())
}

/// Parses `30m`, `2h`, `7d` or `45s`.
pub(crate) fn parse_age(text: &str) -> anyhow::Result<Duration> {
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let n: u64 = number
        .parse()
        .with_context(|| format!("`{text}` is not a duration like 30m, 2h or 7d"))?;
    let seconds = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => anyhow::bail!("`{text}` is not a duration like 30m, 2h or 7d"),
    };
    Ok(Duration::from_secs(seconds))
}

/// `inqubo runs`.
pub(crate) async fn runs(
    context: &Context,
    store: &str,
    filter: query::RunFilter,
) -> anyhow::Result<()> {
    let pool = open(store).await?;
    let page = query::list_runs(&pool, &filter, 1, 500).await?;
    let runs = page["runs"].as_array().cloned().unwrap_or_default();
    if context.json {
        println!("{}", serde_json::Value::Array(runs));
        return Ok(());
    }
    for run in runs {
        let took = match (run["finished_ms"].as_i64(), run["created_ms"].as_i64()) {
            (Some(end), Some(start)) => format!("{} ms", end - start),
            _ => "-".to_owned(),
        };
        let resumed = match run["generation"].as_i64() {
            Some(n) if n > 1 => format!(" ({n} generations)"),
            _ => String::new(),
        };
        println!(
            "{:<20} {:<36} {:<10} {took}{resumed}",
            run["workflow"].as_str().unwrap_or_default(),
            run["run_id"].as_str().unwrap_or_default(),
            run["status"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

/// `inqubo run <id>`.
pub(crate) async fn run(context: &Context, store: &str, run_id: &str) -> anyhow::Result<i32> {
    let pool = open(store).await?;
    let Some(mut report) = query::run_detail(&pool, run_id).await? else {
        eprintln!("run {run_id} is not in the history");
        return Ok(1);
    };
    if let Some(fields) = report.as_object_mut() {
        fields.remove("definition");
    }
    if context.json {
        println!("{report}");
        return Ok(0);
    }
    println!(
        "run {run_id} of {}: {}",
        report["workflow"].as_str().unwrap_or_default(),
        report["status"].as_str().unwrap_or_default()
    );
    let created = report["created_ms"].as_i64().unwrap_or_default();
    println!("  input {}", report["input"]);
    for generation in report["generations"].as_array().into_iter().flatten() {
        println!("  {}", generation_line(generation, created));
    }
    for map in report["maps"].as_array().into_iter().flatten() {
        println!(
            "  {:<28} map of {} elements: {} succeeded, {} running, {} failed, {} skipped",
            map["step"].as_str().unwrap_or_default(),
            map["elements"],
            map["succeeded"],
            map["running"],
            map["failed"],
            map["skipped"],
        );
    }
    for attempt in report["attempts"].as_array().into_iter().flatten() {
        let status = attempt["status"].as_str().unwrap_or_default();
        let took = match (
            attempt["finished_ms"].as_i64(),
            attempt["started_ms"].as_i64(),
        ) {
            _ if status == "skipped" => "-".to_owned(),
            (Some(end), Some(start)) => format!("{} ms", end - start),
            _ => "running".to_owned(),
        };
        let detail = if status == "skipped" {
            format!(
                "not run: {}",
                attempt["reason"].as_str().unwrap_or("its run had ended")
            )
        } else {
            attempt["error"]
                .as_str()
                .or_else(|| attempt["output"].is_null().then_some(""))
                .map_or_else(|| attempt["output"].to_string(), str::to_owned)
        };
        println!(
            "  {:<28} attempt {:<3} gen {:<3} {status:<10} {took:<10} {detail}",
            attempt["step"].as_str().unwrap_or_default(),
            attempt["attempt"],
            attempt["generation"],
        );
        if !attempt["input"].is_null() {
            println!("  {:<28} input {}", "", attempt["input"]);
        }
    }
    Ok(0)
}

/// One generation of a run as a line of `inqubo run`: how it ended and when (counted from the
/// run's start), with the failed step or the reason for a cancel.
fn generation_line(generation: &serde_json::Value, created_ms: i64) -> String {
    let number = &generation["generation"];
    let Some(status) = generation["status"].as_str() else {
        return format!("generation {number:<3} not seen by the monitor");
    };
    let Some(ended) = generation["ended_ms"].as_i64() else {
        return format!("generation {number:<3} {status}");
    };
    let outcome = &generation["outcome"];
    let why = match status {
        "failed" if outcome.is_object() => format!(
            "  {} attempt {} failed: {} ({})",
            outcome["step"].as_str().unwrap_or_default(),
            outcome["attempt"],
            outcome["error"].as_str().unwrap_or_default(),
            outcome["reason"].as_str().unwrap_or_default()
        ),
        "cancelled" if outcome.is_object() => {
            format!("  {}", outcome["reason"].as_str().unwrap_or_default())
        }
        _ => String::new(),
    };
    format!(
        "generation {number:<3} {status:<10} after {} ms{why}",
        ended - created_ms
    )
}
