//! Join shards: where the parents of a join meet.
//!
//! Every join (a join step, or the run join that waits for a run's last steps) has
//! [`JOIN_SHARDS`](crate::JOIN_SHARDS) shard queues, each with a single active consumer among
//! all runners; a run's pieces always go to the same shard (a stable hash of its run id). The
//! active consumer keeps the shard's [`JoinBook`] in memory and works in batches:
//!
//! 1. take the pieces that have arrived (up to 256; no waiting for more),
//! 2. add them to the book; publish what fires (a join step's input, `run.succeeded`,
//!    `run.failed`) and wait for the confirms,
//! 3. publish the book's snapshot to the shard's state queue (which keeps only the latest) and
//!    wait for the confirm,
//! 4. acknowledge the pieces.
//!
//! No delivery stays unacknowledged longer than a batch, so a join may wait days for its last
//! parent. If the active runner dies, another runner's consumer becomes active, loads the
//! latest snapshot and receives the unacknowledged pieces again; pieces already in the
//! snapshot are recognised and ignored. See docs/joins.md for why this is correct.

use std::{sync::Arc, time::Duration};

use futures_util::{FutureExt, StreamExt};
use inqubo_core::{engine::Engine, join::JoinBook, trace::child_traceparent};
use lapin::{
    Channel, Consumer,
    options::{BasicAckOptions, BasicCancelOptions, BasicGetOptions, BasicNackOptions},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::{
    error::{Error, Result},
    publisher::Publisher,
    topology::Topology,
    wire::{self, Wire},
};

/// The most pieces handled in one batch.
const BATCH: usize = 256;

/// How long the acknowledgement of a batch may take.
const BATCH_ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// One shard of one join.
#[derive(Debug)]
pub(crate) struct JoinShard {
    pub(crate) topology: Topology,
    pub(crate) engine: Arc<Engine>,
    /// A join step's name, or [`RUN_JOIN`](inqubo_core::protocol::RUN_JOIN).
    pub(crate) join: String,
    pub(crate) shard: u32,
    pub(crate) publisher: Publisher,
}

impl JoinShard {
    /// Reads the snapshots in the state queue, leaving them there, and starts from the newest
    /// (see [`JoinBook::newest`]): the queue keeps the last few, so that a stale snapshot
    /// arriving late cannot push the current one out.
    async fn load(&self, channel: &Channel) -> Result<JoinBook> {
        let queue =
            self.topology
                .join_state_queue(self.engine.workflow().name(), &self.join, self.shard);
        let mut found = Vec::new();
        while found.len() < inqubo_core::protocol::JOIN_STATE_SLOTS as usize {
            match channel
                .basic_get(queue.as_str().into(), BasicGetOptions::default())
                .await?
            {
                Some(message) => found.push(message.delivery),
                None => break,
            }
        }
        let (book, unreadable) = JoinBook::newest(found.iter().map(|d| d.data.as_slice()));
        if unreadable > 0 {
            error!(join = %self.join, shard = self.shard, unreadable, "join snapshots unreadable; skipped");
        }
        // One by one: `multiple` would also return the batch this channel is holding.
        for snapshot in &found {
            snapshot
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await?;
        }
        Ok(book)
    }
}

/// Consumes one join shard until `cancel` fires or the consumer fails.
pub(crate) async fn consume_shard(
    shard: JoinShard,
    channel: Channel,
    mut consumer: Consumer,
    cancel: CancellationToken,
) -> Result<()> {
    let queue = consumer.queue().to_string();
    // Loaded when this consumer becomes active, that is on its first delivery.
    let mut book: Option<JoinBook> = None;
    loop {
        let first = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            next = consumer.next() => next,
        };
        let mut batch = match first {
            Some(Ok(delivery)) => vec![delivery],
            Some(Err(error)) => return Err(error.into()),
            None => return Err(Error::ConsumerStopped { queue }),
        };
        // No waiting: the batch is what has already arrived. Under load, pieces pile up
        // while the previous batch is confirmed, so batches still form.
        while batch.len() < BATCH {
            match consumer.next().now_or_never() {
                Some(Some(Ok(delivery))) => batch.push(delivery),
                Some(Some(Err(error))) => return Err(error.into()),
                Some(None) => return Err(Error::ConsumerStopped { queue }),
                None => break,
            }
        }
        let book = match &mut book {
            Some(book) => book,
            None => book.insert(shard.load(&channel).await?),
        };
        let mut fired: Vec<Wire> = Vec::new();
        for delivery in &batch {
            let incoming = wire::incoming(delivery);
            let trace = child_traceparent(incoming.traceparent());
            let effects = shard
                .engine
                .join_piece(&shard.join, book, &incoming, &trace);
            if let Some(failure) = &effects.failure {
                warn!(join = %shard.join, error = %failure.error, "join piece unreadable; parked");
            }
            let received = delivery.properties.headers().as_ref();
            fired.extend(Wire::all(shard.topology.names(), effects.publish, received));
        }
        // What fired must be confirmed before the snapshot that forgets it.
        shard.publisher.send_all(fired).await?;
        let snapshot = shard.engine.join_snapshot(&shard.join, shard.shard, book);
        let snapshot = Wire::new(shard.topology.names(), snapshot, None);
        shard.publisher.send_all(vec![snapshot]).await?;
        if let Some(last) = batch.last() {
            // Bounded: on a dying connection the ack may never be answered; the pieces are
            // then redelivered and recognised from the snapshot.
            tokio::time::timeout(
                BATCH_ACK_TIMEOUT,
                last.ack(BasicAckOptions { multiple: true }),
            )
            .await
            .map_err(|_| Error::AckTimeout {
                queue: queue.clone(),
            })??;
        }
        debug!(join = %shard.join, shard = shard.shard, pieces = batch.len(), pending = book.pending_runs(), "join batch");
    }
    channel
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await?;
    Ok(())
}
