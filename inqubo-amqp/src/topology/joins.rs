//! The queues of a workflow's joins: how many shards they have, and declaring one shard.

use inqubo_core::{
    WorkflowName,
    protocol::{JOIN_SHARDS, JOIN_SLOTS, Names, RUN_JOIN},
};
use lapin::{
    Channel, Connection,
    options::{QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};

use super::{Topology, declare_queue};
use crate::error::Result;

impl Topology {
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
}

/// Whether the broker answered "not found" (404): a passive declaration of a missing queue.
fn is_not_found(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e) if e.get_id() == 404)
}
