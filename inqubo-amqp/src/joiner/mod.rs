//! Join shards: where the parents of a join meet.
//!
//! Every join (a join step, or the run join that waits for a run's last steps) has a few
//! shard queues ([`JOIN_SHARDS`](inqubo_core::protocol::JOIN_SHARDS) unless raised), each with a
//! single active consumer among all runners; a run's pieces always go to the same shard (the
//! one its slot, a stable hash of its run id, is bound to). The active consumer keeps the
//! shard's [`JoinBook`] in memory and works in batches:
//!
//! 1. take the pieces that have arrived (up to 256; no waiting for more),
//! 2. add them to the book; publish what fires (a join step's input, `run.succeeded`,
//!    `run.failed`) and wait for the confirms,
//! 3. publish the batch's journal record — the pieces it added, nothing else — to the shard's
//!    journal queue,
//! 4. acknowledge the pieces once that record (and every earlier one) is confirmed; the next
//!    batch is handled meanwhile, so a join's second piece never waits for the first one's
//!    record.
//!
//! Now and then (see [`journal::SNAPSHOT_AFTER_PIECES`]) it also writes a snapshot of the book
//! to the journal, in parts, and then deletes the records the snapshot covers, so that the
//! journal stays about as large as the book. No delivery stays unacknowledged longer than a
//! batch, so a join may wait days for its last parent. If the active runner dies, another
//! runner's consumer becomes active, rebuilds the book from the newest complete snapshot and
//! the batch records after it, and receives the unacknowledged pieces again; pieces already in
//! the book are recognised and ignored. See docs/joins.md for why this is correct.

use std::{sync::Arc, time::Duration};

use futures_util::{FutureExt, StreamExt};
use inqubo_core::{
    RunId,
    engine::Engine,
    join::{JoinBook, Piece},
    journal::{self, Record},
    protocol::Names,
    trace::child_traceparent,
};
use lapin::{
    Channel, Consumer,
    message::Delivery,
    options::{BasicAckOptions, BasicCancelOptions, BasicGetOptions, BasicNackOptions},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::{
    error::{Error, Result},
    publisher::Publisher,
    topology::Topology,
    wire::{self, Wire},
};

mod balance;

pub(crate) use balance::HeldShards;
use balance::{BALANCE_EVERY, Holding};

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
    /// How many shards the join has.
    pub(crate) shards: u32,
    pub(crate) publisher: Publisher,
    /// Where the journal is read and trimmed (never the consumer's channel, whose batch
    /// acknowledgements are `multiple`).
    pub(crate) journal_channel: Channel,
    /// Snapshot every this many batches instead of the default policy.
    pub(crate) snapshot_every: Option<usize>,
    /// The join shards this runner holds, over all its joins.
    pub(crate) held: Arc<HeldShards>,
}

/// The time now, in milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Takes every message of `queue` without acknowledging it.
async fn take_all(channel: &Channel, queue: &str) -> Result<Vec<Delivery>> {
    let mut taken = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await?
    {
        taken.push(message.delivery);
    }
    Ok(taken)
}

/// Gives `taken` back to their queue, one by one (`multiple` would also return the batch the
/// channel is holding).
async fn give_back(taken: &[Delivery]) -> Result<()> {
    for delivery in taken {
        delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await?;
    }
    Ok(())
}

impl JoinShard {
    /// Rebuilds the shard's book, leaving every record where it was: the newest snapshot of
    /// the former state queue (runners before the journal wrote one per batch there), then
    /// the journal's newest complete snapshot and the batch records after it.
    async fn load(&self) -> Result<JoinBook> {
        let channel = &self.journal_channel;
        let workflow = self.engine.workflow().name();
        let state = self
            .topology
            .join_state_queue(workflow, &self.join, self.shard);
        let legacy = take_all(channel, state.as_str()).await?;
        let (base, _, unreadable) =
            JoinBook::newest_found(legacy.iter().map(|d| d.data.as_slice()));
        give_back(&legacy).await?;
        let queue = self
            .topology
            .join_journal_queue(workflow, &self.join, self.shard);
        let taken = take_all(channel, queue.as_str()).await?;
        let mut records = Vec::with_capacity(taken.len());
        let mut unreadable_records = 0;
        for delivery in &taken {
            match Record::from_incoming(&wire::incoming(delivery)) {
                Some(record) => records.push(record),
                None => unreadable_records += 1,
            }
        }
        give_back(&taken).await?;
        let (book, found) = journal::rebuild(
            base.unwrap_or_default(),
            records,
            |book, now_ms| self.engine.join_tick(book, now_ms),
            |book, run, piece| self.engine.replay_join_piece(&self.join, book, run, piece),
        );
        let unreadable = unreadable + unreadable_records + found.unreadable;
        if unreadable > 0 || found.incomplete > 0 {
            error!(join = %self.join, shard = self.shard, unreadable, incomplete = found.incomplete, "join journal records skipped");
        }
        info!(
            join = %self.join,
            shard = self.shard,
            snapshot = ?found.snapshot,
            batches = found.batches,
            pieces = found.pieces,
            pending = book.pending_runs(),
            epoch = book.version().0,
            "join shard taken over"
        );
        Ok(book)
    }

    /// Writes a snapshot of `book` to the journal, then deletes the records before it.
    /// Returns the snapshot's size in bytes.
    async fn snapshot(&self, book: &JoinBook) -> Result<usize> {
        let parts = self.engine.join_snapshot(&self.join, self.shard, book);
        let bytes = parts.iter().map(|p| p.body.len()).sum();
        let wires = Wire::all(self.topology.names(), parts, None);
        self.publisher.send_all(wires).await?;
        let queue =
            self.topology
                .join_journal_queue(self.engine.workflow().name(), &self.join, self.shard);
        let covered = book.version();
        if let Err(error) = delete_before(&self.journal_channel, queue.as_str(), covered).await {
            // The records stay; the next snapshot deletes them.
            debug!(join = %self.join, %error, "journal records before a snapshot not deleted yet");
        }
        Ok(bytes)
    }
}

/// Deletes the journal records older than the snapshot of version `covered` (the batches it
/// includes, and older snapshots), from the head of the queue, stopping at the first record
/// that is not (the snapshot itself, or a later batch).
async fn delete_before(channel: &Channel, queue: &str, covered: (u64, u64)) -> Result<()> {
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await?
    {
        let delivery = message.delivery;
        let record = Record::from_incoming(&wire::incoming(&delivery));
        let older = record.is_none_or(|r| match r.kind {
            journal::RecordKind::Batch => r.version <= covered,
            journal::RecordKind::Snapshot { .. } => r.version < covered,
        });
        if older {
            delivery.ack(BasicAckOptions::default()).await?;
        } else {
            give_back(std::slice::from_ref(&delivery)).await?;
            break;
        }
    }
    Ok(())
}

/// What the journal holds since the last snapshot this consumer wrote.
#[derive(Debug, Default)]
struct Journaled {
    pieces: usize,
    records: usize,
    bytes: usize,
    last_snapshot_bytes: usize,
}

impl Journaled {
    /// Whether a snapshot is due: every `every` batches if set, else once the journal holds
    /// enough since the last one (see [`journal::SNAPSHOT_AFTER_PIECES`]).
    fn due(&self, every: Option<usize>) -> bool {
        match every {
            Some(every) => self.records >= every,
            None => {
                (self.pieces >= journal::SNAPSHOT_AFTER_PIECES
                    || self.records >= journal::SNAPSHOT_AFTER_RECORDS)
                    && self.bytes.saturating_mul(2) >= self.last_snapshot_bytes
            }
        }
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
    let mut book: Option<(JoinBook, Holding)> = None;
    let mut journaled = Journaled::default();
    let mut balance = tokio::time::interval(BALANCE_EVERY);
    // The acknowledgement of the batches handled so far, waiting for their records' confirms:
    // the next batch starts meanwhile (see `settle_after`).
    let mut settling: Option<Settling> = None;
    loop {
        let first = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            settled = async {
                match settling.as_mut() {
                    Some(pending) => pending.await,
                    None => std::future::pending().await,
                }
            }, if settling.is_some() => {
                settling = None;
                settled?;
                continue;
            }
            // Before the next delivery, which is always ready under load.
            _ = balance.tick(), if book.is_some() => {
                let over = tokio::time::timeout(BALANCE_EVERY, shard.more_than_share()).await;
                if let Ok(Some(runners)) = over {
                    // Everything handled is acknowledged before the shard moves.
                    if let Some(pending) = settling.take() {
                        pending.await?;
                    }
                    if let Some((_, holding)) = book.take() {
                        holding.counted_down();
                    }
                    consumer = shard.hand_over(&channel, consumer, runners).await?;
                    journaled = Journaled::default();
                }
                continue;
            }
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
            Some((book, _)) => book,
            None => {
                let loaded = shard.load().await?;
                &mut book.insert((loaded, shard.held.take())).0
            }
        };
        shard.engine.join_tick(book, now_ms());
        let mut fired: Vec<Wire> = Vec::new();
        let mut applied: Vec<(RunId, Piece)> = Vec::new();
        for delivery in &batch {
            let incoming = wire::incoming(delivery);
            let trace = child_traceparent(incoming.traceparent());
            let effects = match shard.engine.read_join_piece(&shard.join, &incoming) {
                // Sent under a former shard count (a client that addresses `run % 4`): on to
                // the shard that owns the run, once.
                Ok((run_id, _))
                    if Names::join_shard(run_id.as_str(), shard.shards) != shard.shard =>
                {
                    shard.engine.misrouted_join_piece(&shard.join, &incoming)
                }
                Ok((run_id, piece)) => {
                    let effects = shard.engine.apply_join_piece(
                        &shard.join,
                        book,
                        &run_id,
                        piece.clone(),
                        &incoming,
                        &trace,
                    );
                    applied.push((run_id, piece));
                    effects
                }
                Err(parked) => parked,
            };
            if let Some(failure) = &effects.failure {
                warn!(join = %shard.join, error = %failure.error, "join piece unreadable; parked");
            }
            let received = delivery.properties.headers().as_ref();
            fired.extend(Wire::all(shard.topology.names(), effects.publish, received));
        }
        // What fired must be confirmed before the record that says these pieces were added.
        shard.publisher.send_all(fired).await?;
        let record = shard
            .engine
            .join_record(&shard.join, shard.shard, book, &applied);
        journaled.bytes += record.body.len();
        journaled.pieces += applied.len();
        let record = Wire::new(shard.topology.names(), record, None);
        let confirm = shard.publisher.send(&record).await?;
        journaled.records += 1;
        let pieces = batch.len();
        settling = Some(settle_after(
            settling.take(),
            confirm,
            batch.pop(),
            queue.clone(),
        ));
        if journaled.due(shard.snapshot_every) {
            // A snapshot covers only batches whose records are confirmed.
            if let Some(pending) = settling.take() {
                pending.await?;
            }
            journaled.last_snapshot_bytes = shard.snapshot(book).await?;
            journaled.pieces = 0;
            journaled.records = 0;
            journaled.bytes = 0;
        }
        debug!(join = %shard.join, shard = shard.shard, pieces, pending = book.pending_runs(), "join batch");
    }
    if let Some(pending) = settling.take() {
        pending.await?;
    }
    channel
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await?;
    Ok(())
}

/// The acknowledgement of handled batches, once their journal records are confirmed.
type Settling = std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>;

/// Acknowledges a batch (up to its `last` delivery) once `earlier` batches are acknowledged
/// and its journal record is `confirm`ed.
///
/// The next batch is handled meanwhile — its join fires without waiting for this batch's
/// record — and acknowledged only after this one: a record never says a batch was added while
/// an earlier batch's record might be missing. If this record is lost (its publish fails) the
/// consumer stops, every batch not acknowledged comes again, and a new owner replays no record
/// after the missing one ([`journal::rebuild`]). The price: a crash can make the joins of two
/// batches fire twice instead of one (with the same `message_id`s).
fn settle_after(
    earlier: Option<Settling>,
    confirm: crate::publisher::PendingConfirm,
    last: Option<Delivery>,
    queue: String,
) -> Settling {
    Box::pin(async move {
        if let Some(earlier) = earlier {
            earlier.await?;
        }
        confirm.wait().await?;
        if let Some(last) = last {
            // Bounded: on a dying connection the ack may never be answered; the pieces are
            // then redelivered and recognised from the journal.
            tokio::time::timeout(
                BATCH_ACK_TIMEOUT,
                last.ack(BasicAckOptions { multiple: true }),
            )
            .await
            .map_err(|_| Error::AckTimeout { queue })??;
        }
        Ok(())
    })
}
