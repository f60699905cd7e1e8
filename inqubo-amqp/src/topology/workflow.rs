//! Declaring and deleting the queues and bindings of one workflow.

use inqubo_core::{
    Priority, RoutingKey, Workflow,
    protocol::{JOIN_SLOTS, Names, QueueName, argument},
};
use lapin::{
    Channel, ExchangeKind,
    options::QueueBindOptions,
    types::{AMQPValue, FieldTable},
};
use tracing::{debug, instrument};

use super::{Topology, declare_exchange, declare_queue, delete_queue, run_state_args};
use crate::error::Result;

impl Topology {
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
}
