//! Join shards: where the parents of a join meet.
//!
//! Every join (a join step, or the run join that waits for a run's last steps) has
//! [`JOIN_SHARDS`](crate::JOIN_SHARDS) shard queues, each with a single active consumer among
//! all runners; a run's pieces always go to the same shard (a stable hash of its run id). The
//! active consumer keeps the shard's [`JoinBook`] in memory and works in batches:
//!
//! 1. take the pieces that are ready (up to 256),
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

use std::time::Duration;

use futures_util::StreamExt;
use inqubo_core::{
    EventKind, RunFailedBody, StepName, Workflow,
    join::{JoinBook, JoinDecision, JoinTarget, Piece},
    protocol::header,
    trace::child_traceparent,
};
use lapin::{
    Channel, Consumer,
    message::Delivery,
    options::{BasicAckOptions, BasicCancelOptions, BasicGetOptions, BasicNackOptions},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::{
    error::{Error, Result},
    message::{self, Outgoing, Received, string_value},
    publisher::Publisher,
    topology::{JOIN_STATE_SLOTS, RUN_JOIN, Topology},
};

/// The most pieces handled in one batch.
const BATCH: usize = 256;

/// How long the acknowledgement of a batch may take.
const BATCH_ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a batch waits for more pieces once it has one.
const BATCH_WINDOW: Duration = Duration::from_millis(2);

/// One shard of one join.
#[derive(Debug)]
pub(crate) struct JoinShard {
    pub(crate) topology: Topology,
    pub(crate) workflow: Workflow,
    /// A join step's name, or [`RUN_JOIN`].
    pub(crate) join: String,
    pub(crate) shard: u32,
    pub(crate) publisher: Publisher,
}

impl JoinShard {
    fn target<'a>(&'a self, leaves: &'a [StepName]) -> Option<JoinTarget<'a>> {
        if self.join == RUN_JOIN {
            return Some(JoinTarget::Run(leaves));
        }
        self.workflow
            .step(&self.join)
            .and_then(|step| step.join())
            .map(JoinTarget::Step)
    }

    fn state_queue(&self) -> String {
        self.topology
            .join_state_queue(self.workflow.name(), &self.join, self.shard)
            .to_string()
    }

    /// Reads the snapshots in the state queue, leaving them there, and starts from the newest
    /// (see [`JoinBook::newest`]): the queue keeps the last few, so that a stale snapshot
    /// arriving late cannot push the current one out.
    async fn load(&self, channel: &Channel) -> Result<JoinBook> {
        let queue = self.state_queue();
        let mut found = Vec::new();
        while found.len() < JOIN_STATE_SLOTS as usize {
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

    /// Adds one piece to `book`; returns what to publish.
    fn add(
        &self,
        book: &mut JoinBook,
        target: JoinTarget<'_>,
        delivery: &Delivery,
    ) -> Option<Outgoing> {
        let received = Received::from_delivery(delivery);
        let Ok(run_id) = received.run_id() else {
            warn!(join = %self.join, "join piece without a run id; dropped");
            return None;
        };
        let headers = delivery.properties.headers().as_ref();
        let parent = headers
            .and_then(|h| h.inner().get(header::JOIN_PARENT))
            .and_then(string_value)
            .and_then(|p| StepName::new(p).ok());
        let failed = headers.is_some_and(|h| h.inner().contains_key(header::JOIN_FAILED));
        let piece = match (parent, failed) {
            (_, true) => match serde_json::from_slice::<RunFailedBody>(&delivery.data) {
                Ok(body) => Piece::Failed(body),
                Err(error) => {
                    warn!(join = %self.join, %error, "failure piece unreadable; dropped");
                    return None;
                }
            },
            (Some(parent), false) => Piece::Output {
                parent,
                output: delivery.data.clone(),
            },
            (None, false) => {
                warn!(join = %self.join, "join piece without a parent; dropped");
                return None;
            }
        };
        let wf = self.workflow.name();
        let trace = child_traceparent(received.traceparent().as_deref());
        let fired = match book.add(&run_id, piece, target) {
            JoinDecision::Fire(body) if self.join == RUN_JOIN => {
                debug!(run_id = %run_id, "run succeeded");
                Some(message::run_event(
                    &self.topology,
                    wf,
                    &run_id,
                    EventKind::RunSucceeded,
                    body,
                ))
            }
            JoinDecision::Fire(input) => {
                let step = StepName::new(self.join.clone()).ok()?;
                debug!(run_id = %run_id, join = %self.join, "join fired");
                Some(message::joined_input(
                    &self.topology,
                    wf,
                    &step,
                    &run_id,
                    input,
                ))
            }
            JoinDecision::Abort(failure) if self.join == RUN_JOIN => Some(message::run_event(
                &self.topology,
                wf,
                &run_id,
                EventKind::RunFailed,
                message::json(&failure),
            )),
            _ => None,
        };
        fired.map(|message| message.with_trace(&trace))
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
    let leaves: Vec<StepName> = shard.workflow.leaves().map(|s| s.name().clone()).collect();
    let Some(target) = shard.target(&leaves) else {
        return Err(Error::ConsumerStopped { queue });
    };
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
        while batch.len() < BATCH {
            match tokio::time::timeout(BATCH_WINDOW, consumer.next()).await {
                Ok(Some(Ok(delivery))) => batch.push(delivery),
                Ok(Some(Err(error))) => return Err(error.into()),
                Ok(None) => return Err(Error::ConsumerStopped { queue }),
                Err(_quiet) => break,
            }
        }
        let book = match &mut book {
            Some(book) => book,
            None => book.insert(shard.load(&channel).await?),
        };
        let fired: Vec<Outgoing> = batch
            .iter()
            .filter_map(|delivery| shard.add(book, target, delivery))
            .collect();
        // What fired must be confirmed before the snapshot that forgets it.
        shard.publisher.send_all(fired).await?;
        let snapshot = message::join_snapshot(&shard.state_queue(), book.snapshot());
        shard.publisher.send_all(vec![snapshot]).await?;
        if let Some(last) = batch.last() {
            // Bounded: on a dying connection the ack may never be answered; the pieces are
            // then redelivered and recognised from the snapshot.
            tokio::time::timeout(
                BATCH_ACK_TIMEOUT,
                last.ack(BasicAckOptions { multiple: true }),
            )
            .await
            .map_err(|_| Error::ConsumerStopped {
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
