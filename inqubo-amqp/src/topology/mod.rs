//! Declaring Inqubo's topology on RabbitMQ: every exchange, queue, binding and queue argument.
//!
//! The names come from [`Names`] in `inqubo_core::protocol` (its documentation shows the
//! layout and how retry delays work); this module adds what only a broker needs: queue types,
//! `x-` arguments, and the declarations themselves.

use std::ops::Deref;

use inqubo_core::{
    WorkflowName,
    protocol::{
        BROKER_DELIVERY_LIMIT, DELAY_TICK, DELAY_TIERS, JOIN_STATE_SLOTS, Names, QueueName,
        argument,
    },
};
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

mod joins;
mod workflow;

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
            dead_letter_at_least_once(&mut args);
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
            dead_letter_at_least_once(&mut args);
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

/// Quorum-queue dead-lettering that loses nothing: at-least-once, which needs
/// `reject-publish` overflow (without it the broker silently falls back to at-most-once).
fn dead_letter_at_least_once(args: &mut FieldTable) {
    args.insert(
        argument::DEAD_LETTER_STRATEGY.into(),
        long_string(argument::AT_LEAST_ONCE),
    );
    args.insert(
        argument::OVERFLOW.into(),
        long_string(argument::REJECT_PUBLISH),
    );
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
