//! Every exchange, queue, binding and queue argument Inqubo uses, derived from
//! `(prefix, workflow, step)`.
//!
//! Nothing else in the crate spells a queue name or an `x-` argument. The layout, for the
//! default prefix `inqubo`:
//!
//! | name | kind | role |
//! |---|---|---|
//! | `inqubo` | topic exchange | triggers and every lifecycle event |
//! | `inqubo.<workflow>.<step>` | queue | a step's input, bound to its parent's `succeeded` key |
//! | `inqubo.<workflow>.parked` | queue | inputs that failed for good, with the reason in headers |
//! | `inqubo.retry` | topic exchange | delivers a retry to one step's queue (`#.<workflow>.<step>`) |
//! | `inqubo.delay.<k>`, k = 0..24 | topic exchange + queue | retry delay tiers (see below) |
//!
//! ## Retry delays without head-of-line blocking
//!
//! A delay is rounded up to a whole number of 100 ms ticks and written in binary. Tier `k`
//! holds messages for `2^k` ticks: its queue has a queue-level TTL, so every message in it
//! expires in arrival order and a long delay never sits in front of a short one. On expiry a
//! tier dead-letters into the next lower tier's exchange, which either parks the message in
//! its queue (bit set) or passes it straight on (bit clear). The routing key carries the bits,
//! most significant first, then `<workflow>.<step>`; after tier 0 the message reaches the
//! `retry` exchange, which routes it to that one step's queue. 25 tiers cover delays up to
//! about 38 days with a fixed set of 25 queues per prefix, whatever the number of workflows.

use std::{fmt, time::Duration};

use inqubo_core::{RoutingKey, StepName, Workflow, WorkflowName, protocol::DEFAULT_PREFIX};
use lapin::{
    Channel, ExchangeKind,
    options::{
        ExchangeBindOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use tracing::{debug, instrument};

use crate::error::{Error, Result};

pub use inqubo_core::protocol::{DELAY_TICK, DELAY_TIERS, MAX_DELAY};

/// On quorum queues, the broker dead-letters a step's input into the parked queue after this
/// many deliveries. Runners park such inputs themselves much earlier (see
/// `RunnerBuilder::max_redeliveries`); this is the safety net for a runner that dies before it
/// can even read the message.
pub const BROKER_DELIVERY_LIMIT: i64 = 20;

/// Shards per join: each has its own queue and single active consumer, so the joins of one
/// step spread over up to this many runners.
pub const JOIN_SHARDS: u32 = 4;

/// Snapshots a join state queue keeps: the newest few, so that a stale one published late by
/// a consumer that lost its shard cannot push the current one out (see `JoinBook::newest`).
pub(crate) const JOIN_STATE_SLOTS: u32 = 8;

/// The name of the run join: the join that waits for every last step of a run.
pub const RUN_JOIN: &str = "_run";

/// The kind of queue Inqubo declares for steps, delays and parked messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueueType {
    /// Replicated Raft queues with at-least-once dead-lettering (the default, and the faster
    /// of the two on RabbitMQ 3.10).
    #[default]
    Quorum,
    /// Classic mirrored-or-not queues; dead-lettering is at-most-once.
    Classic,
}

/// The name of a queue.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueName(String);

impl QueueName {
    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where to publish a retry so that it reaches one step's queue after a delay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelayRoute {
    /// The exchange to publish to.
    pub exchange: String,
    /// The routing key to publish with.
    pub routing_key: String,
    /// The delay the message will actually wait (rounded up to [`DELAY_TICK`]).
    pub delay: Duration,
}

/// The names and arguments of one prefix's topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
    queue_type: QueueType,
}

impl Default for Topology {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
            queue_type: QueueType::default(),
        }
    }
}

impl Topology {
    /// The topology under `prefix`, with queues of `queue_type`.
    pub fn new(prefix: impl Into<String>, queue_type: QueueType) -> Result<Self> {
        let prefix = prefix.into();
        let valid = !prefix.is_empty()
            && prefix.len() <= 64
            && prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !valid {
            return Err(Error::InvalidPrefix(prefix));
        }
        Ok(Self { prefix, queue_type })
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The queue type.
    pub fn queue_type(&self) -> QueueType {
        self.queue_type
    }

    /// The topic exchange carrying triggers and lifecycle events: the prefix itself.
    pub fn exchange(&self) -> &str {
        &self.prefix
    }

    /// The exchange that routes a delayed retry to its step's queue.
    pub fn retry_exchange(&self) -> String {
        format!("{}.retry", self.prefix)
    }

    /// The exchange of delay tier `tier`.
    pub fn delay_exchange(&self, tier: u32) -> String {
        format!("{}.delay.{tier}", self.prefix)
    }

    /// The queue of delay tier `tier`.
    pub fn delay_queue(&self, tier: u32) -> QueueName {
        QueueName(format!("{}.delay.{tier}", self.prefix))
    }

    /// The input queue of `step`.
    pub fn step_queue(&self, workflow: &WorkflowName, step: &StepName) -> QueueName {
        QueueName(format!("{}.{workflow}.{step}", self.prefix))
    }

    /// The parked queue of `workflow`.
    pub fn parked_queue(&self, workflow: &WorkflowName) -> QueueName {
        QueueName(format!("{}.{workflow}.parked", self.prefix))
    }

    /// The queue where runners announce their workflow definitions (the latest 1,000
    /// announcements of the prefix), read by tools such as `inqubo workflows`.
    pub fn registry_queue(&self) -> QueueName {
        QueueName(format!("{}.registry", self.prefix))
    }

    fn registry_args(&self) -> FieldTable {
        let mut args = self.durable_queue_args();
        args.insert("x-max-length".into(), AMQPValue::LongLongInt(1000));
        args
    }

    /// The direct exchange that carries join pieces to join shards.
    pub fn join_exchange(&self) -> String {
        format!("{}.join", self.prefix)
    }

    /// The joins of `workflow` that need shards: every join step, and the run join unless
    /// the workflow is a chain (whose only last step reports the run's end itself).
    pub fn joins(workflow: &Workflow) -> Vec<String> {
        let mut joins: Vec<String> = workflow
            .steps()
            .iter()
            .filter(|s| s.is_join())
            .map(|s| s.name().to_string())
            .collect();
        if !workflow.is_chain() {
            joins.push(RUN_JOIN.to_owned());
        }
        joins
    }

    /// The shard of `run_id` among [`JOIN_SHARDS`] (FNV-1a, stable across versions).
    pub fn join_shard(run_id: &str) -> u32 {
        let hash = run_id.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
            (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
        });
        hash % JOIN_SHARDS
    }

    /// The routing key of join `join`'s shard `shard` on the join exchange.
    pub fn join_key(workflow: &WorkflowName, join: &str, shard: u32) -> String {
        format!("{workflow}.{join}.{shard}")
    }

    /// The queue of shard `shard` of join `join`.
    pub fn join_queue(&self, workflow: &WorkflowName, join: &str, shard: u32) -> QueueName {
        QueueName(format!("{}.{workflow}.{join}.shard-{shard}", self.prefix))
    }

    /// The queue holding the latest state snapshot of shard `shard` of join `join`.
    pub fn join_state_queue(&self, workflow: &WorkflowName, join: &str, shard: u32) -> QueueName {
        QueueName(format!("{}.{workflow}.{join}.state-{shard}", self.prefix))
    }

    fn join_queue_args(&self) -> FieldTable {
        let mut args = self.durable_queue_args();
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        args
    }

    fn join_state_args(&self) -> FieldTable {
        let mut args = self.durable_queue_args();
        args.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(JOIN_STATE_SLOTS.into()),
        );
        args
    }

    /// The key binding a step's queue to the retry exchange.
    fn retry_binding(workflow: &WorkflowName, step: &StepName) -> String {
        format!("#.{workflow}.{step}")
    }

    /// Where to publish a retry of `step` so that it arrives after `delay`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use inqubo_amqp::Topology;
    ///
    /// let route = Topology::default().delay_route(
    ///     Duration::from_millis(1_000),
    ///     &"simple".parse().unwrap(),
    ///     &"process_data".parse().unwrap(),
    /// );
    /// // 1 s = 10 ticks = 0b1010: tiers 3 (800 ms) and 1 (200 ms).
    /// assert_eq!(route.exchange, "inqubo.delay.3");
    /// assert!(route.routing_key.ends_with("1.0.1.0.simple.process_data"));
    /// ```
    pub fn delay_route(
        &self,
        delay: Duration,
        workflow: &WorkflowName,
        step: &StepName,
    ) -> DelayRoute {
        let ticks = ticks_for(delay);
        if ticks == 0 {
            return DelayRoute {
                exchange: self.retry_exchange(),
                routing_key: format!("{workflow}.{step}"),
                delay: Duration::ZERO,
            };
        }
        let bits: Vec<&str> = (0..DELAY_TIERS)
            .rev()
            .map(|tier| if ticks & (1 << tier) != 0 { "1" } else { "0" })
            .collect();
        let highest = 63 - ticks.leading_zeros();
        DelayRoute {
            exchange: self.delay_exchange(highest),
            routing_key: format!("{}.{workflow}.{step}", bits.join(".")),
            delay: DELAY_TICK * u32::try_from(ticks).unwrap_or(u32::MAX),
        }
    }

    fn durable_queue_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        if self.queue_type == QueueType::Quorum {
            args.insert("x-queue-type".into(), long_string("quorum"));
        }
        args
    }

    fn step_queue_args(&self, workflow: &WorkflowName) -> FieldTable {
        let mut args = self.durable_queue_args();
        if self.queue_type == QueueType::Quorum {
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(BROKER_DELIVERY_LIMIT),
            );
            args.insert("x-dead-letter-exchange".into(), long_string(""));
            let parked = self.parked_queue(workflow);
            args.insert(
                "x-dead-letter-routing-key".into(),
                long_string(parked.as_str()),
            );
            args.insert(
                "x-dead-letter-strategy".into(),
                long_string("at-least-once"),
            );
            args.insert("x-overflow".into(), long_string("reject-publish"));
        }
        args
    }

    fn delay_queue_args(&self, tier: u32) -> FieldTable {
        let mut args = self.durable_queue_args();
        let ttl_ms = DELAY_TICK.as_millis() as i64 * (1_i64 << tier);
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl_ms));
        let next = match tier.checked_sub(1) {
            Some(lower) => self.delay_exchange(lower),
            None => self.retry_exchange(),
        };
        args.insert("x-dead-letter-exchange".into(), long_string(&next));
        if self.queue_type == QueueType::Quorum {
            // Without reject-publish the broker silently falls back to at-most-once.
            args.insert(
                "x-dead-letter-strategy".into(),
                long_string("at-least-once"),
            );
            args.insert("x-overflow".into(), long_string("reject-publish"));
        }
        args
    }

    /// Declares what every workflow under this prefix shares: the events exchange, the retry
    /// exchange and the delay tiers. Idempotent.
    #[instrument(skip_all, fields(prefix = %self.prefix))]
    pub async fn declare_shared(&self, channel: &Channel) -> Result<()> {
        declare_topic(channel, self.exchange()).await?;
        declare_topic(channel, &self.retry_exchange()).await?;
        declare_queue(channel, &self.registry_queue(), self.registry_args()).await?;
        for tier in 0..DELAY_TIERS {
            let exchange = self.delay_exchange(tier);
            declare_topic(channel, &exchange).await?;
            let queue = self.delay_queue(tier);
            declare_queue(channel, &queue, self.delay_queue_args(tier)).await?;
            let skip = "*.".repeat((DELAY_TIERS - 1 - tier) as usize);
            channel
                .queue_bind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    format!("{skip}1.#").into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let next = match tier.checked_sub(1) {
                Some(lower) => self.delay_exchange(lower),
                None => self.retry_exchange(),
            };
            channel
                .exchange_bind(
                    next.as_str().into(),
                    exchange.as_str().into(),
                    format!("{skip}0.#").into(),
                    ExchangeBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        debug!("shared topology declared");
        Ok(())
    }

    /// Declares the queues and bindings of `workflow`: one queue per step and a parked queue.
    /// Idempotent.
    #[instrument(skip_all, fields(prefix = %self.prefix, workflow = %workflow.name()))]
    pub async fn declare_workflow(&self, channel: &Channel, workflow: &Workflow) -> Result<()> {
        let name = workflow.name();
        declare_queue(channel, &self.parked_queue(name), self.durable_queue_args()).await?;
        for step in workflow.steps() {
            let queue = self.step_queue(name, step.name());
            declare_queue(channel, &queue, self.step_queue_args(name)).await?;
            // A join step's input comes from its join shards, through the retry exchange.
            let mut inputs: Vec<RoutingKey> = Vec::new();
            if !step.is_join() {
                inputs.extend(
                    step.parents()
                        .iter()
                        .map(|parent| RoutingKey::step_input(name, Some(parent))),
                );
                if inputs.is_empty() {
                    inputs.push(RoutingKey::step_input(name, None));
                }
            }
            for key in inputs {
                channel
                    .queue_bind(
                        queue.as_str().into(),
                        self.exchange().into(),
                        key.as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
            }
            channel
                .queue_bind(
                    queue.as_str().into(),
                    self.retry_exchange().into(),
                    Self::retry_binding(name, step.name()).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        let joins = Self::joins(workflow);
        if !joins.is_empty() {
            declare_exchange(channel, &self.join_exchange(), ExchangeKind::Direct).await?;
        }
        for join in joins {
            for shard in 0..JOIN_SHARDS {
                let queue = self.join_queue(name, &join, shard);
                declare_queue(channel, &queue, self.join_queue_args()).await?;
                channel
                    .queue_bind(
                        queue.as_str().into(),
                        self.join_exchange().into(),
                        Self::join_key(name, &join, shard).into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                let state = self.join_state_queue(name, &join, shard);
                declare_queue(channel, &state, self.join_state_args()).await?;
            }
        }
        debug!("workflow topology declared");
        Ok(())
    }

    /// Deletes the queues of `workflow`, messages included. For tests and operators.
    pub async fn delete_workflow(&self, channel: &Channel, workflow: &Workflow) -> Result<()> {
        for step in workflow.steps() {
            delete_queue(channel, &self.step_queue(workflow.name(), step.name())).await?;
        }
        for join in Self::joins(workflow) {
            for shard in 0..JOIN_SHARDS {
                delete_queue(channel, &self.join_queue(workflow.name(), &join, shard)).await?;
                delete_queue(
                    channel,
                    &self.join_state_queue(workflow.name(), &join, shard),
                )
                .await?;
            }
        }
        delete_queue(channel, &self.parked_queue(workflow.name())).await
    }

    /// Deletes the shared exchanges and delay tiers of this prefix. For tests and operators.
    pub async fn delete_shared(&self, channel: &Channel) -> Result<()> {
        delete_queue(channel, &self.registry_queue()).await?;
        for tier in 0..DELAY_TIERS {
            delete_queue(channel, &self.delay_queue(tier)).await?;
            channel
                .exchange_delete(
                    self.delay_exchange(tier).into(),
                    ExchangeDeleteOptions::default(),
                )
                .await?;
        }
        channel
            .exchange_delete(
                self.retry_exchange().into(),
                ExchangeDeleteOptions::default(),
            )
            .await?;
        channel
            .exchange_delete(
                self.join_exchange().into(),
                ExchangeDeleteOptions::default(),
            )
            .await?;
        channel
            .exchange_delete(self.exchange().into(), ExchangeDeleteOptions::default())
            .await?;
        Ok(())
    }
}

fn ticks_for(delay: Duration) -> u64 {
    inqubo_core::protocol::delay_ticks(delay)
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

async fn declare_topic(channel: &Channel, name: &str) -> Result<()> {
    declare_exchange(channel, name, ExchangeKind::Topic).await
}

async fn declare_exchange(channel: &Channel, name: &str, kind: ExchangeKind) -> Result<()> {
    channel
        .exchange_declare(
            ShortString::from(name),
            kind,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|source| mismatch_or_amqp(name, source))
}

async fn declare_queue(channel: &Channel, queue: &QueueName, args: FieldTable) -> Result<()> {
    channel
        .queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), args)
        .await
        .map(drop)
        .map_err(|source| mismatch_or_amqp(queue.as_str(), source))
}

async fn delete_queue(channel: &Channel, queue: &QueueName) -> Result<()> {
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    Ok(())
}

fn mismatch_or_amqp(name: &str, source: lapin::Error) -> Error {
    let precondition_failed = matches!(
        source.kind(),
        lapin::ErrorKind::ProtocolError(e) if e.get_id() == 406
    );
    if precondition_failed {
        Error::TopologyMismatch {
            name: name.to_owned(),
            source,
        }
    } else {
        Error::Amqp(source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wf() -> WorkflowName {
        WorkflowName::new("simple").unwrap()
    }
    fn step() -> StepName {
        StepName::new("process_data").unwrap()
    }

    #[test]
    fn names_follow_the_documented_layout() {
        let topology = Topology::default();
        assert_eq!(topology.exchange(), "inqubo");
        assert_eq!(
            topology.step_queue(&wf(), &step()).as_str(),
            "inqubo.simple.process_data"
        );
        assert_eq!(
            topology.parked_queue(&wf()).as_str(),
            "inqubo.simple.parked"
        );
        assert_eq!(topology.retry_exchange(), "inqubo.retry");
        assert_eq!(topology.delay_queue(4).as_str(), "inqubo.delay.4");
        let custom = Topology::new("acme", QueueType::Classic).unwrap();
        assert_eq!(
            custom.step_queue(&wf(), &step()).as_str(),
            "acme.simple.process_data"
        );
    }

    #[test]
    fn join_shards_are_stable_and_spread() {
        assert_eq!(Topology::join_shard("run-1"), Topology::join_shard("run-1"));
        let mut seen = [0; JOIN_SHARDS as usize];
        for i in 0..1000 {
            seen[Topology::join_shard(&format!("run-{i}")) as usize] += 1;
        }
        assert!(seen.iter().all(|n| *n > 150), "{seen:?}");
        // FNV-1a of the empty string, so the hash never changes between versions.
        assert_eq!(Topology::join_shard(""), 0x811c_9dc5 % JOIN_SHARDS);
        let topology = Topology::default();
        assert_eq!(
            topology.join_queue(&wf(), "d", 2).as_str(),
            "inqubo.simple.d.shard-2"
        );
        assert_eq!(Topology::join_key(&wf(), RUN_JOIN, 1), "simple._run.1");
    }

    #[test]
    fn prefixes_are_validated() {
        assert!(Topology::new("", QueueType::Quorum).is_err());
        assert!(Topology::new("has space", QueueType::Quorum).is_err());
        assert!(Topology::new("t-1.x_y", QueueType::Quorum).is_ok());
    }

    #[test]
    fn delays_round_up_to_ticks_and_cap() {
        assert_eq!(ticks_for(Duration::ZERO), 0);
        assert_eq!(ticks_for(Duration::from_millis(1)), 1);
        assert_eq!(ticks_for(Duration::from_millis(100)), 1);
        assert_eq!(ticks_for(Duration::from_millis(101)), 2);
        assert_eq!(ticks_for(Duration::from_secs(300)), 3000);
        assert_eq!(
            ticks_for(Duration::from_secs(u64::MAX)),
            (1 << DELAY_TIERS) - 1
        );
        assert_eq!(MAX_DELAY, DELAY_TICK * ((1 << DELAY_TIERS) - 1));
    }

    #[test]
    fn delay_routes_spell_the_ticks_in_binary_from_the_highest_tier() {
        let topology = Topology::default();
        let route = topology.delay_route(Duration::from_millis(500), &wf(), &step());
        // 5 ticks = 0b101
        let words: Vec<&str> = route.routing_key.split('.').collect();
        assert_eq!(words.len(), DELAY_TIERS as usize + 2);
        assert_eq!(
            &words[DELAY_TIERS as usize - 3..],
            ["1", "0", "1", "simple", "process_data"]
        );
        assert!(words[..DELAY_TIERS as usize - 3].iter().all(|w| *w == "0"));
        assert_eq!(route.exchange, "inqubo.delay.2");
        assert_eq!(route.delay, Duration::from_millis(500));
    }

    #[test]
    fn zero_delay_goes_straight_to_the_retry_exchange() {
        let route = Topology::default().delay_route(Duration::ZERO, &wf(), &step());
        assert_eq!(route.exchange, "inqubo.retry");
        assert_eq!(route.routing_key, "simple.process_data");
    }

    #[test]
    fn each_tier_binding_matches_exactly_its_own_bit() {
        // The binding pattern of tier k has DELAY_TIERS-1-k leading wildcards: check that the
        // word it tests is the bit of tier k in a delay route.
        let topology = Topology::default();
        for ticks in [1_u64, 2, 3, 10, 1000, (1 << DELAY_TIERS) - 1] {
            let route = topology.delay_route(DELAY_TICK * ticks as u32, &wf(), &step());
            let words: Vec<&str> = route.routing_key.split('.').collect();
            for tier in 0..DELAY_TIERS {
                let position = (DELAY_TIERS - 1 - tier) as usize;
                let expected = if ticks & (1 << tier) != 0 { "1" } else { "0" };
                assert_eq!(words[position], expected, "ticks {ticks} tier {tier}");
            }
        }
    }

    #[test]
    fn quorum_delay_queues_dead_letter_at_least_once_into_the_next_tier() {
        let topology = Topology::default();
        let args = topology.delay_queue_args(3);
        let get = |k: &str| args.inner().get(k).cloned();
        assert_eq!(get("x-message-ttl"), Some(AMQPValue::LongLongInt(800)));
        assert_eq!(
            get("x-dead-letter-exchange"),
            Some(long_string("inqubo.delay.2"))
        );
        assert_eq!(
            get("x-dead-letter-strategy"),
            Some(long_string("at-least-once"))
        );
        assert_eq!(get("x-overflow"), Some(long_string("reject-publish")));
        let bottom = topology.delay_queue_args(0);
        assert_eq!(
            bottom.inner().get("x-dead-letter-exchange").cloned(),
            Some(long_string("inqubo.retry"))
        );
        let classic = Topology::new("inqubo", QueueType::Classic)
            .unwrap()
            .delay_queue_args(0);
        assert!(classic.inner().get("x-queue-type").is_none());
        assert!(classic.inner().get("x-dead-letter-strategy").is_none());
    }
}
