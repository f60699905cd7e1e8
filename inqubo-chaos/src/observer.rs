//! Counts every lifecycle event of the chaos prefix through a durable queue of its own, so
//! that no event is missed across a broker restart.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt;
use inqubo::{EventKind, LifecycleEvent, Topology, protocol::RoutingKey};
use lapin::{
    Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::FieldTable,
};

/// The observer's name: its queue is `<prefix>.chaos-observer`.
const OBSERVER: &str = "chaos-observer";

/// What the observer has seen so far.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// `started` events per (run, step, attempt).
    starts: HashMap<(String, String, u32), u32>,
    /// `succeeded` events per (run, step).
    successes: HashMap<(String, String), u32>,
    /// `run.succeeded` events per run.
    run_successes: HashMap<String, u32>,
    /// Runs with a `run.failed` event.
    failed_runs: HashSet<String>,
    /// The last event seen per run, as `step.kind`.
    last_event: HashMap<String, String>,
    /// Events seen.
    pub(crate) events: u64,
}

impl Tally {
    fn record(&mut self, event: &LifecycleEvent) {
        self.events += 1;
        let run = event.run_id.to_string();
        match event.kind {
            EventKind::RunSucceeded => {
                *self.run_successes.entry(run.clone()).or_default() += 1;
            }
            EventKind::RunFailed => {
                self.failed_runs.insert(run.clone());
            }
            _ => {}
        }
        let Some(step) = event.step.as_ref().map(ToString::to_string) else {
            return;
        };
        self.last_event.insert(run.clone(), event.short_name());
        match event.kind {
            EventKind::Started => {
                *self
                    .starts
                    .entry((run, step, event.attempt.unwrap_or(0)))
                    .or_default() += 1;
            }
            EventKind::Succeeded => {
                *self.successes.entry((run, step)).or_default() += 1;
            }
            _ => {}
        }
    }

    /// Runs that reported `run.succeeded`.
    pub(crate) fn completed(&self) -> usize {
        self.run_successes.len()
    }

    /// `run.succeeded` events beyond the first of each run.
    pub(crate) fn duplicate_run_ends(&self) -> u32 {
        self.run_successes
            .values()
            .map(|n| n.saturating_sub(1))
            .sum()
    }

    /// Runs whose step `step` started its first attempt more than once.
    pub(crate) fn repeated_first_starts(&self, step: &str) -> usize {
        self.starts
            .iter()
            .filter(|((_, s, attempt), n)| s == step && *attempt == 1 && **n > 1)
            .count()
    }

    /// The last event seen of `run`, if any.
    pub(crate) fn last_event(&self, run: &str) -> Option<&str> {
        self.last_event.get(run).map(String::as_str)
    }

    /// Whether `run` reported its end.
    pub(crate) fn is_complete(&self, run: &str) -> bool {
        self.run_successes.contains_key(run) || self.failed_runs.contains(run)
    }

    /// Runs with a step that failed for good.
    pub(crate) fn failed(&self) -> usize {
        self.failed_runs.len()
    }

    /// Attempts that started more than once (a redelivery after a kill or a lost connection).
    pub(crate) fn duplicate_attempts(&self) -> u32 {
        self.starts.values().map(|n| n.saturating_sub(1)).sum()
    }

    /// Steps that published `succeeded` more than once for the same run.
    pub(crate) fn duplicate_successes(&self) -> u32 {
        self.successes.values().map(|n| n.saturating_sub(1)).sum()
    }
}

/// Declares the observer's durable queue (bound to every step event and run end of the
/// topology's prefix) and returns its name. Done before any run is triggered, so nothing is
/// missed.
pub(crate) async fn declare(url: &str, topology: &Topology) -> anyhow::Result<String> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .exchange_declare(
            topology.exchange().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let queue = topology.observer_queue(OBSERVER);
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::durable(),
            topology.durable_queue_args(),
        )
        .await?;
    for binding in RoutingKey::observed_events() {
        channel
            .queue_bind(
                queue.as_str().into(),
                topology.exchange().into(),
                binding.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    connection.close(200, "declared".into()).await?;
    Ok(queue.to_string())
}

/// Consumes the observer queue into `tally` for ever, reconnecting after any failure.
///
/// `urls` may list the nodes of a cluster; each reconnection tries the next.
pub(crate) async fn observe(urls: Vec<String>, queue: String, tally: Arc<Mutex<Tally>>) {
    for (failures, url) in urls.iter().cycle().enumerate() {
        match consume(url, &queue, &tally).await {
            Err(error) if failures == 0 => {
                tracing::warn!(%error, "observer lost its connection; reconnecting");
            }
            Err(error) => tracing::debug!(%error, "observer still reconnecting"),
            Ok(()) => {}
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// How long the observer waits for a connection or a delivery before starting over.
const STALL: Duration = Duration::from_secs(10);

async fn consume(url: &str, queue: &str, tally: &Mutex<Tally>) -> anyhow::Result<()> {
    // Every broker call is bounded: across a broker restart a call on a dying connection may
    // never be answered.
    let (_connection, mut consumer) = tokio::time::timeout(STALL, async {
        let connection = Connection::connect(url, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel.basic_qos(500, Default::default()).await?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        anyhow::Ok((connection, consumer))
    })
    .await??;
    // A consumer that hears nothing for a while may be attached to a connection that died
    // silently: start over (the queue is durable, nothing is missed).
    while let Some(delivery) = tokio::time::timeout(STALL, consumer.next()).await? {
        let delivery = delivery?;
        if let Ok(event) = inqubo::protocol::event_from_delivery(&delivery) {
            tally
                .lock()
                .map_err(|_| anyhow::anyhow!("tally poisoned"))?
                .record(&event);
        }
        tokio::time::timeout(STALL, delivery.ack(BasicAckOptions::default())).await??;
    }
    anyhow::bail!("observer consumer ended")
}
