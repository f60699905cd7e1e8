//! Counts every lifecycle event of the chaos prefix through a durable queue of its own, so
//! that no event is missed across a broker restart.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
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

/// The terminal events seen of one (run, generation): their kinds, with the distinct
/// `message_id`s of each, and how many deliveries carried them.
#[derive(Debug, Default)]
struct Ending {
    kinds: Vec<(EventKind, BTreeSet<String>)>,
    deliveries: u32,
}

impl Ending {
    fn record(&mut self, kind: EventKind, message_id: String) {
        self.deliveries += 1;
        match self.kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, ids)) => {
                ids.insert(message_id);
            }
            None => self.kinds.push((kind, BTreeSet::from([message_id]))),
        }
    }

    /// The one way this generation ended, if it ended one way only.
    fn kind(&self) -> Option<EventKind> {
        match self.kinds.as_slice() {
            [(kind, _)] => Some(*kind),
            _ => None,
        }
    }

    /// Deliveries beyond the first of each distinct event (same kind, same `message_id`).
    fn duplicates(&self) -> u32 {
        let distinct: usize = self.kinds.iter().map(|(_, ids)| ids.len()).sum();
        self.deliveries.saturating_sub(distinct as u32)
    }

    /// What is wrong with it: two kinds, or two `message_id`s of one kind.
    fn violation(&self) -> Option<String> {
        let distinct: usize = self.kinds.iter().map(|(_, ids)| ids.len()).sum();
        (distinct > 1).then(|| {
            self.kinds
                .iter()
                .map(|(kind, ids)| {
                    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                    format!("run.{kind} [{}]", ids.join(", "))
                })
                .collect::<Vec<_>>()
                .join(" and ")
        })
    }
}

/// What the observer has seen so far.
#[derive(Debug)]
pub(crate) struct Tally {
    /// When the harness started: trails are timed from it.
    started: Instant,
    /// Every event of every run, in the order seen, for the runs the summary explains.
    trails: HashMap<String, Vec<String>>,
    /// `started` events per (run, step, attempt).
    starts: HashMap<(String, String, u32), u32>,
    /// `succeeded` events per (run, step).
    successes: HashMap<(String, String), u32>,
    /// The terminal events per (run, generation).
    endings: HashMap<(String, u32), Ending>,
    /// The highest generation seen per run, in its events (but `run.resumed` and
    /// `run.duplicate`).
    generations: HashMap<String, u32>,
    /// The last event seen per run, as `step.kind` (or `run.kind`) and generation.
    last_event: HashMap<String, (String, u32)>,
    /// Events seen.
    pub(crate) events: u64,
}

impl Tally {
    /// An empty tally, its trails timed from `started`.
    pub(crate) fn new(started: Instant) -> Self {
        Self {
            started,
            trails: HashMap::new(),
            starts: HashMap::new(),
            successes: HashMap::new(),
            endings: HashMap::new(),
            generations: HashMap::new(),
            last_event: HashMap::new(),
            events: 0,
        }
    }

    fn record(&mut self, event: &LifecycleEvent, message_id: Option<&str>) {
        self.events += 1;
        let run = event.run_id.to_string();
        let attempt = event.attempt.map(|a| format!(" #{a}")).unwrap_or_default();
        self.trails.entry(run.clone()).or_default().push(format!(
            "{:.1}s {}{attempt} g{}",
            self.started.elapsed().as_secs_f64(),
            event.short_name(),
            event.generation
        ));
        // `run.resumed` announces a generation before its inputs go back: a resume that
        // failed after announcing has not started it (the harness tries it again).
        if !matches!(event.kind, EventKind::RunResumed | EventKind::RunDuplicate) {
            let generation = self.generations.entry(run.clone()).or_insert(0);
            *generation = (*generation).max(event.generation);
        }
        if event.kind.ends_run() {
            self.endings
                .entry((run.clone(), event.generation))
                .or_default()
                .record(event.kind, message_id.unwrap_or("(none)").to_owned());
        }
        self.last_event
            .insert(run.clone(), (event.short_name(), event.generation));
        // A map element is a step of its own here: `resize[7]`.
        let Some(step) = event.step.as_ref().map(|step| match event.element_index() {
            Some(index) => format!("{step}[{index}]"),
            None => step.to_string(),
        }) else {
            return;
        };
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

    /// The highest generation seen of `run` (0 if none of its events was seen).
    pub(crate) fn generation(&self, run: &str) -> u32 {
        self.generations.get(run).copied().unwrap_or(0)
    }

    /// How generation `generation` of `run` ended: `None` while it has not, or if it ended
    /// in more than one way (a violation).
    pub(crate) fn ending(&self, run: &str, generation: u32) -> Option<EventKind> {
        self.endings
            .get(&(run.to_owned(), generation))
            .and_then(Ending::kind)
    }

    /// How `run` ended in generation `at_least` or later, if it has: the last generation
    /// seen and its ending.
    pub(crate) fn final_ending(&self, run: &str, at_least: u32) -> Option<(u32, EventKind)> {
        let generation = self.generation(run).max(at_least);
        self.ending(run, generation).map(|kind| (generation, kind))
    }

    /// Every (run, generation) that ended in more than one way, or with two `message_id`s
    /// for one way, described.
    pub(crate) fn violations(&self) -> Vec<String> {
        let mut found: Vec<(&(String, u32), String)> = self
            .endings
            .iter()
            .filter_map(|(key, ending)| ending.violation().map(|v| (key, v)))
            .collect();
        found.sort();
        found
            .into_iter()
            .map(|((run, generation), what)| format!("{run} generation {generation}: {what}"))
            .collect()
    }

    /// Terminal events delivered again with the same `message_id` (a republished run end).
    pub(crate) fn duplicate_run_ends(&self) -> u32 {
        self.endings.values().map(Ending::duplicates).sum()
    }

    /// Runs whose step `step` started its first attempt more than once.
    pub(crate) fn repeated_first_starts(&self, step: &str) -> usize {
        self.starts
            .iter()
            .filter(|((_, s, attempt), n)| s == step && *attempt == 1 && **n > 1)
            .count()
    }

    /// Adds what the harness did to `run` (a cancel, a resume) to its trail.
    pub(crate) fn note(&mut self, run: &str, what: &str) {
        let at = self.started.elapsed().as_secs_f64();
        self.trails
            .entry(run.to_owned())
            .or_default()
            .push(format!("{at:.1}s ({what})"));
    }

    /// Every event seen of `run`, in order: `<seconds>s <step>.<kind> #<attempt> g<generation>`.
    pub(crate) fn trail(&self, run: &str) -> &[String] {
        self.trails.get(run).map_or(&[], Vec::as_slice)
    }

    /// The last event seen of `run`, with its generation, if any.
    pub(crate) fn last_event(&self, run: &str) -> Option<(&str, u32)> {
        self.last_event
            .get(run)
            .map(|(event, generation)| (event.as_str(), *generation))
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
    for binding in RoutingKey::observed_events(None) {
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
            let message_id = delivery.properties.message_id().as_ref();
            tally
                .lock()
                .map_err(|_| anyhow::anyhow!("tally poisoned"))?
                .record(&event, message_id.map(|id| id.as_str()));
        }
        tokio::time::timeout(STALL, delivery.ack(BasicAckOptions::default())).await??;
    }
    anyhow::bail!("observer consumer ended")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(key: &str, run: &str, generation: u32) -> LifecycleEvent {
        LifecycleEvent::from_wire(key, Some(run), None, b"{}")
            .unwrap()
            .with_generation(generation)
    }

    #[test]
    fn one_ending_per_generation_delivered_twice_is_a_duplicate_not_a_violation() {
        let mut tally = Tally::new(Instant::now());
        let ended = event("fanout.run.succeeded", "run-1", 1);
        tally.record(&ended, Some("run-1:fanout:run:succeeded"));
        tally.record(&ended, Some("run-1:fanout:run:succeeded"));
        assert_eq!(tally.ending("run-1", 1), Some(EventKind::RunSucceeded));
        assert_eq!(tally.duplicate_run_ends(), 1);
        assert!(tally.violations().is_empty());
    }

    #[test]
    fn two_kinds_or_two_message_ids_in_one_generation_are_violations() {
        let mut tally = Tally::new(Instant::now());
        tally.record(&event("fanout.run.succeeded", "run-1", 1), Some("a"));
        tally.record(&event("fanout.run.cancelled", "run-1", 1), Some("b"));
        tally.record(&event("fanout.run.failed", "run-2", 1), Some("c"));
        tally.record(&event("fanout.run.failed", "run-2", 1), Some("d"));
        assert_eq!(tally.ending("run-1", 1), None);
        assert_eq!(
            tally.violations(),
            [
                "run-1 generation 1: run.succeeded [a] and run.cancelled [b]",
                "run-2 generation 1: run.failed [c, d]",
            ]
        );
        assert_eq!(tally.duplicate_run_ends(), 0);
    }

    #[test]
    fn each_generation_ends_once_and_the_last_one_counts() {
        let mut tally = Tally::new(Instant::now());
        tally.record(&event("fanout.run.failed", "run-1", 1), Some("f1"));
        assert_eq!(
            tally.final_ending("run-1", 1),
            Some((1, EventKind::RunFailed))
        );
        assert_eq!(
            tally.final_ending("run-1", 2),
            None,
            "resumed, not ended yet"
        );
        tally.record(&event("fanout.step.store.started", "run-1", 2), Some("s2"));
        assert_eq!(tally.final_ending("run-1", 1), None);
        tally.record(&event("fanout.run.succeeded", "run-1", 2), Some("s2"));
        assert_eq!(
            tally.final_ending("run-1", 1),
            Some((2, EventKind::RunSucceeded))
        );
        assert!(tally.violations().is_empty());
        assert_eq!(tally.last_event("run-1"), Some(("run.succeeded", 2)));
    }
}
