//! Declaring Inqubo's topology on RabbitMQ: every exchange, queue, binding and queue argument.
//!
//! The names come from [`Names`] in `inqubo_core::protocol` (its documentation shows the
//! layout and how retry delays work); this module adds what only a broker needs: queue types,
//! `x-` arguments, and the declarations themselves.

use std::ops::Deref;

use inqubo_core::{
    Priority, RoutingKey, Workflow, WorkflowName,
    protocol::{
        BROKER_DELIVERY_LIMIT, DELAY_TICK, DELAY_TIERS, JOIN_SHARDS, JOIN_SLOTS, JOIN_STATE_SLOTS,
        Names, QueueName, RUN_JOIN, argument,
    },
};
use lapin::{
    Channel, Connection, ExchangeKind,
    options::{
        ExchangeBindOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use tracing::{debug, instrument};

use crate::error::{Error, Result};

/// The kind of queue Inqubo declares for steps, delays and parked messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueueType {
    /// Replicated Raft queues with at-least-once dead-lettering (the default, and the faster
    /// of the two on RabbitMQ 3.10).
    #[default]
    Quorum,
    /// Classic queues. Their dead-lettering is at-most-once: a retry waiting in a delay tier
    /// when the broker crashes mid-forward can be lost (its run then never ends, and no
    /// event says why). Choose them only where losing a retry in a broker crash is
    /// acceptable; runs without retries are not affected.
    Classic,
}

/// The topology of one prefix: its [`Names`] (which it dereferences to) and the type of the
/// queues it declares.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Topology {
    names: Names,
    queue_type: QueueType,
}

impl Deref for Topology {
    type Target = Names;

    fn deref(&self) -> &Names {
        &self.names
    }
}

impl Topology {
    /// The topology under `prefix`, with queues of `queue_type`.
    pub fn new(prefix: impl Into<String>, queue_type: QueueType) -> Result<Self> {
        let names = Names::new(prefix).map_err(|e| Error::InvalidPrefix(e.0))?;
        Ok(Self { names, queue_type })
    }

    /// The names of every exchange, queue and routing key.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The queue type.
    pub fn queue_type(&self) -> QueueType {
        self.queue_type
    }

    fn registry_args(&self) -> FieldTable {
        let mut args = self.durable_queue_args();
        args.insert(argument::MAX_LENGTH.into(), AMQPValue::LongLongInt(1000));
        args
    }

    fn join_queue_args(&self) -> FieldTable {
        let mut args = self.durable_queue_args();
        args.insert(
            argument::SINGLE_ACTIVE_CONSUMER.into(),
            AMQPValue::Boolean(true),
        );
        args
    }

    fn join_state_args(&self) -> FieldTable {
        let mut args = self.durable_queue_args();
        args.insert(
            argument::MAX_LENGTH.into(),
            AMQPValue::LongLongInt(JOIN_STATE_SLOTS.into()),
        );
        args
    }

    /// The arguments every durable queue of this topology is declared with (its type).
    pub fn durable_queue_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        if self.queue_type == QueueType::Quorum {
            args.insert(argument::QUEUE_TYPE.into(), long_string(argument::QUORUM));
        }
        args
    }

    fn step_queue_args(&self, workflow: &WorkflowName) -> FieldTable {
        let mut args = self.durable_queue_args();
        if self.queue_type == QueueType::Quorum {
            args.insert(
                argument::DELIVERY_LIMIT.into(),
                AMQPValue::LongLongInt(BROKER_DELIVERY_LIMIT),
            );
            args.insert(argument::DEAD_LETTER_EXCHANGE.into(), long_string(""));
            let parked = self.parked_queue(workflow);
            args.insert(
                argument::DEAD_LETTER_ROUTING_KEY.into(),
                long_string(parked.as_str()),
            );
            args.insert(
                argument::DEAD_LETTER_STRATEGY.into(),
                long_string(argument::AT_LEAST_ONCE),
            );
            args.insert(
                argument::OVERFLOW.into(),
                long_string(argument::REJECT_PUBLISH),
            );
        }
        args
    }

    fn delay_queue_args(&self, tier: u32) -> FieldTable {
        let mut args = self.durable_queue_args();
        let ttl_ms = DELAY_TICK.as_millis() as i64 * (1_i64 << tier);
        args.insert(argument::MESSAGE_TTL.into(), AMQPValue::LongLongInt(ttl_ms));
        args.insert(
            argument::DEAD_LETTER_EXCHANGE.into(),
            long_string(&self.delay_next(tier)),
        );
        if self.queue_type == QueueType::Quorum {
            // Without reject-publish the broker silently falls back to at-most-once.
            args.insert(
                argument::DEAD_LETTER_STRATEGY.into(),
                long_string(argument::AT_LEAST_ONCE),
            );
            args.insert(
                argument::OVERFLOW.into(),
                long_string(argument::REJECT_PUBLISH),
            );
        }
        args
    }

    /// Declares what every workflow under this prefix shares: the events exchange, the retry
    /// exchange and the delay tiers. Idempotent.
    #[instrument(skip_all, fields(prefix = %self.prefix()))]
    pub async fn declare_shared(&self, channel: &Channel) -> Result<()> {
        declare_topic(channel, self.exchange()).await?;
        declare_topic(channel, &self.retry_exchange()).await?;
        declare_queue(channel, &self.registry_queue(), self.registry_args()).await?;
        for tier in 0..DELAY_TIERS {
            let exchange = self.delay_exchange(tier);
            declare_topic(channel, &exchange).await?;
            let queue = self.delay_queue(tier);
            declare_queue(channel, &queue, self.delay_queue_args(tier)).await?;
            let (bit_set, bit_clear) = Names::delay_bindings(tier);
            channel
                .queue_bind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    bit_set.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            channel
                .exchange_bind(
                    self.delay_next(tier).as_str().into(),
                    exchange.as_str().into(),
                    bit_clear.into(),
                    ExchangeBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        debug!("shared topology declared");
        Ok(())
    }

    /// How many shards each join of `workflow` has: as many as its run join has shard queues
    /// (consecutive from 0), or [`JOIN_SHARDS`] for a workflow not declared yet. Every runner
    /// asks when it connects, so that raising the count (`inqubo topology reshard`) reaches
    /// the whole fleet without a setting to keep in step.
    ///
    /// Runners that start together may count while another one declares: shards are
    /// declared from the highest down, the run join's last, so that shard 0 of the run join
    /// exists only once all do and a count never stops part-way. A probe the broker answers
    /// with anything but "not found" fails the count rather than shortening it: a runner that
    /// counted too few shards would bind slots to the wrong queues.
    pub async fn join_shards(
        &self,
        connection: &Connection,
        workflow: &WorkflowName,
    ) -> Result<u32> {
        // A passive declaration of a missing queue closes its channel: the last probe's.
        let channel = connection.create_channel().await?;
        let mut found = 0;
        while found < JOIN_SLOTS {
            let queue = self.join_queue(workflow, RUN_JOIN, found);
            let probe = channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await;
            match probe {
                Ok(_) => found += 1,
                Err(error) if is_not_found(&error) => break,
                Err(error) => return Err(error.into()),
            }
        }
        if channel.status().connected() {
            let _ = channel.close(200, "probed".into()).await;
        }
        Ok(if found == 0 { JOIN_SHARDS } else { found })
    }

    /// Declares the queues and bindings of `workflow`: one queue per step, a redelivered queue
    /// and a parked queue, and the queues of its joins with `join_shards` shards each (see
    /// [`Topology::join_shards`]). Idempotent.
    #[instrument(skip_all, fields(prefix = %self.prefix(), workflow = %workflow.name()))]
    pub async fn declare_workflow(
        &self,
        channel: &Channel,
        workflow: &Workflow,
        join_shards: u32,
    ) -> Result<()> {
        let name = workflow.name();
        declare_queue(channel, &self.parked_queue(name), self.durable_queue_args()).await?;
        // Like a step's queue: the broker parks what it hands out too often (a backstop).
        declare_queue(
            channel,
            &self.redelivered_queue(name),
            self.step_queue_args(name),
        )
        .await?;
        for step in workflow.steps() {
            let queue = self.step_queue(name, step.name());
            let mut args = self.step_queue_args(name);
            if step.single_consumer() {
                // One runner at a time takes this step's inputs: its prefetch is the limit.
                args.insert(
                    argument::SINGLE_ACTIVE_CONSUMER.into(),
                    AMQPValue::Boolean(true),
                );
            }
            declare_queue(channel, &queue, args).await?;
            // A join step's input comes from its join shards, a map's elements from its
            // parent's runner, both through the retry exchange.
            let mut inputs: Vec<RoutingKey> = Vec::new();
            if step.listens_to_parents() {
                inputs.extend(
                    step.parents()
                        .iter()
                        .map(|parent| RoutingKey::step_input(name, Some(parent))),
                );
                if workflow.takes_trigger(step) {
                    inputs.push(RoutingKey::step_input(name, None));
                } else if step.parents().is_empty() {
                    // A first step that only the run join feeds (unique runs); a binding left
                    // by an earlier version goes.
                    channel
                        .queue_unbind(
                            queue.as_str().into(),
                            self.exchange().into(),
                            RoutingKey::step_input(name, None).as_str().into(),
                            FieldTable::default(),
                        )
                        .await?;
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
                    Names::retry_binding(name, step.name()).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            if workflow.has_priorities() {
                // A lane per class besides the step's own queue (the `normal` lane), fed
                // through the retry exchange only.
                for priority in [Priority::High, Priority::Low] {
                    let lane = self.lane_queue(name, step.name(), priority);
                    declare_queue(channel, &lane, self.step_queue_args(name)).await?;
                    channel
                        .queue_bind(
                            lane.as_str().into(),
                            self.retry_exchange().into(),
                            Names::lane_binding(name, step.name(), priority).into(),
                            QueueBindOptions::default(),
                            FieldTable::default(),
                        )
                        .await?;
                }
            }
            if workflow.takes_trigger(step) {
                // Delayed triggers arrive here once their delay is over.
                channel
                    .queue_bind(
                        queue.as_str().into(),
                        self.retry_exchange().into(),
                        Names::delayed_trigger_binding(name).into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
            }
        }
        declare_queue(
            channel,
            &self.schedules_queue(name),
            self.durable_queue_args(),
        )
        .await?;
        let states = self.run_state_queue(name);
        declare_queue(channel, &states, run_state_args()).await?;
        for key in RoutingKey::run_states(name) {
            channel
                .queue_bind(
                    states.as_str().into(),
                    self.exchange().into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        let joins = Names::joins(workflow);
        if !joins.is_empty() {
            declare_exchange(channel, &self.join_exchange(), ExchangeKind::Direct).await?;
        }
        // Highest shard first, the run join last (see `join_shards`).
        for join in joins {
            for shard in (0..join_shards).rev() {
                self.declare_join_shard(channel, name, &join, shard, join_shards)
                    .await?;
            }
        }
        debug!("workflow topology declared");
        Ok(())
    }

    /// Declares shard `shard` of `shards` of `join`: its queue, bound to the slots it takes,
    /// its journal and its former state queue.
    pub async fn declare_join_shard(
        &self,
        channel: &Channel,
        workflow: &WorkflowName,
        join: &str,
        shard: u32,
        shards: u32,
    ) -> Result<()> {
        let queue = self.join_queue(workflow, join, shard);
        declare_queue(channel, &queue, self.join_queue_args()).await?;
        // One binding per slot the shard takes, pipelined.
        let exchange = self.join_exchange();
        let keys: Vec<String> = Names::shard_slots(shard, shards)
            .map(|slot| Names::join_key(workflow, join, slot))
            .collect();
        futures_util::future::try_join_all(keys.iter().map(|key| {
            channel.queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
        }))
        .await?;
        let state = self.join_state_queue(workflow, join, shard);
        declare_queue(channel, &state, self.join_state_args()).await?;
        self.declare_join_journal(channel, workflow, join, shard)
            .await
    }

    /// Declares the journal queue of shard `shard` of `join`.
    pub async fn declare_join_journal(
        &self,
        channel: &Channel,
        workflow: &WorkflowName,
        join: &str,
        shard: u32,
    ) -> Result<()> {
        let journal = self.join_journal_queue(workflow, join, shard);
        declare_queue(channel, &journal, self.durable_queue_args()).await
    }

    /// Deletes the queues of `workflow`, messages included. For tests and operators.
    pub async fn delete_workflow(&self, channel: &Channel, workflow: &Workflow) -> Result<()> {
        for step in workflow.steps() {
            for priority in Priority::ALL {
                delete_queue(
                    channel,
                    &self.lane_queue(workflow.name(), step.name(), priority),
                )
                .await?;
            }
        }
        for join in Names::joins(workflow) {
            // However many shards it was given, the queues that exist go (deleting a queue that
            // does not exist is no error); the requests are pipelined.
            let queues: Vec<QueueName> = (0..JOIN_SLOTS)
                .flat_map(|shard| {
                    [
                        self.join_queue(workflow.name(), &join, shard),
                        self.join_state_queue(workflow.name(), &join, shard),
                        self.join_journal_queue(workflow.name(), &join, shard),
                    ]
                })
                .collect();
            futures_util::future::try_join_all(
                queues.iter().map(|queue| delete_queue(channel, queue)),
            )
            .await?;
        }
        delete_queue(channel, &self.run_state_queue(workflow.name())).await?;
        delete_queue(channel, &self.redelivered_queue(workflow.name())).await?;
        delete_queue(channel, &self.scheduler_queue(workflow.name())).await?;
        delete_queue(channel, &self.schedules_queue(workflow.name())).await?;
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

/// How long the run-state stream keeps `run.failed` and `run.cancelled`: how late a runner may
/// start and still know that a run ended.
pub const RUN_STATE_RETENTION: &str = "7D";

/// A stream (whatever the topology's queue type), kept for [`RUN_STATE_RETENTION`].
fn run_state_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(argument::QUEUE_TYPE.into(), long_string(argument::STREAM));
    args.insert(argument::MAX_AGE.into(), long_string(RUN_STATE_RETENTION));
    args
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

/// Whether the broker answered "not found" (404): a passive declaration of a missing queue.
fn is_not_found(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e) if e.get_id() == 404)
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

    #[test]
    fn a_topology_reads_as_its_names() {
        let topology = Topology::new("acme", QueueType::Classic).unwrap();
        assert_eq!(topology.exchange(), "acme");
        assert!(Topology::new("has space", QueueType::Quorum).is_err());
    }
}
