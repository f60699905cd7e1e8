//! Spreading join shards over the fleet: how many shards a runner holds, and handing one over
//! when it holds more than its share of the runners consuming them (docs/joins.md).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::{FutureExt, StreamExt};
use lapin::{
    Channel, Consumer,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, QueueDeclareOptions},
    types::FieldTable,
};
use tracing::info;

use super::JoinShard;
use crate::error::Result;

/// How many join shards a runner holds (is the active consumer of, with the book loaded), out
/// of how many its workflow has.
#[derive(Debug)]
pub(crate) struct HeldShards {
    held: AtomicUsize,
    total: usize,
}

impl HeldShards {
    /// None held yet, of `total`.
    pub(crate) fn new(total: usize) -> Self {
        Self {
            held: AtomicUsize::new(0),
            total,
        }
    }

    /// How many are held.
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    pub(super) fn take(self: &Arc<Self>) -> Holding {
        self.held.fetch_add(1, Ordering::Relaxed);
        Holding(Arc::clone(self))
    }

    /// Gives one shard up if this runner holds more than its share among `runners`: `true`
    /// for the one caller that may hand its shard over.
    fn give_up_one(&self, runners: usize) -> bool {
        let share = self.total.div_ceil(runners.max(1));
        self.held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                (held > share).then(|| held - 1)
            })
            .is_ok()
    }
}

/// One shard held; dropping it counts it no longer held.
#[derive(Debug)]
pub(super) struct Holding(Arc<HeldShards>);

impl Holding {
    /// Forgets the shard without counting it down again (already counted by `give_up_one`).
    pub(super) fn counted_down(self) {
        std::mem::forget(self);
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How often a runner holding join shards checks that it holds no more than its share.
pub(super) const BALANCE_EVERY: Duration = Duration::from_secs(2);

impl JoinShard {
    /// Whether this runner holds more join shards than its share of the runners consuming
    /// them: the number of runners if it should hand this one over (and it is counted down).
    pub(super) async fn more_than_share(&self) -> Option<usize> {
        // Every runner of the workflow consumes every step queue (the join shard queues have a
        // single active consumer, and count only it).
        let workflow = self.engine.workflow();
        let step = workflow.steps().first()?;
        let queue = self.topology.step_queue(workflow.name(), step.name());
        let declared = self
            .journal_channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .ok()?;
        let runners = usize::try_from(declared.consumer_count()).unwrap_or(1);
        self.held.give_up_one(runners).then_some(runners)
    }

    /// Hands the shard over to the next runner in line: cancels `consumer`, returns what it
    /// had been sent and not handled, and consumes again, behind the others.
    pub(super) async fn hand_over(
        &self,
        channel: &Channel,
        mut consumer: Consumer,
        runners: usize,
    ) -> Result<Consumer> {
        channel
            .basic_cancel(consumer.tag(), BasicCancelOptions::default())
            .await?;
        let mut last = None;
        while let Some(Some(Ok(delivery))) = consumer.next().now_or_never() {
            last = Some(delivery);
        }
        if let Some(last) = last {
            last.nack(BasicNackOptions {
                multiple: true,
                requeue: true,
            })
            .await?;
        }
        info!(
            join = %self.join,
            shard = self.shard,
            runners,
            held = self.held.held(),
            "join shard handed over: this runner held more than its share"
        );
        let queue = consumer.queue().to_string();
        Ok(channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?)
    }
}
