//! A runner's sessions: starting one (declare, announce, start the consumers) and keeping
//! it, reconnecting with backoff whenever a consumer fails.

use std::{sync::Arc, time::Duration};

use inqubo_core::{
    Priority,
    engine::Engine,
    protocol::{self, Names, QueueName, argument},
};
use lapin::{
    options::{BasicConsumeOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable},
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Shared;
use crate::{
    consumer::{LaneGate, Pace, Signals, StepWorker, consume, consume_redelivered},
    error::{Error, Result},
    joiner::{HeldShards, JoinShard, consume_shard},
    metric::StepMetrics,
    run_state, scheduler, session,
    wire::Wire,
};

/// Unacknowledged pieces a join shard consumer may hold: one batch and the next.
const JOIN_PREFETCH: u16 = 512;

/// The first wait before reconnecting; it doubles up to [`MAX_RECONNECT_DELAY`].
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(100);

/// The longest wait between two reconnection attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(10);

/// How long reconnecting (declaring, announcing, starting the consumers) may take before the
/// attempt is abandoned and another one starts.
const SESSION_START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a runner that just connected waits to read the run-state stream to its end
/// before it runs steps anyway.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(5);

/// Unacknowledged run-state events the runner holds while reading the stream.
const RUN_STATE_PREFETCH: u16 = 500;

/// The step consumers of one connection, and the token that stops them.
pub(super) struct Session {
    consumers: JoinSet<Result<()>>,
    cancel: CancellationToken,
    /// Cancelled when the connection is lost: attempts still running on it are dropped.
    lost: CancellationToken,
}

/// Connects (if needed), declares the topology and starts one consumer per step.
pub(super) async fn start_session(shared: &Shared, cancel: CancellationToken) -> Result<Session> {
    let session = shared.client.session().await?;
    let setup = session.channel().await?;
    shared.topology.declare_shared(&setup).await?;
    let join_shards = shared
        .topology
        .join_shards(&session.connection, shared.workflow.name())
        .await?;
    shared
        .topology
        .declare_workflow(&setup, &shared.workflow, join_shards)
        .await?;
    drop(setup);
    // Tell tools (`inqubo workflows`) what this workflow looks like.
    let mut definition = shared.workflow.definition();
    definition.schedules = shared.schedules.iter().map(|s| s.definition()).collect();
    let announcement = Wire::new(
        shared.topology.names(),
        protocol::announcement_of(&definition),
        None,
    );
    session.publisher.send_all(vec![announcement]).await?;
    let engine = Arc::new(Engine::new(shared.workflow.clone(), shared.limits));
    let mut consumers = JoinSet::new();
    let signals = Signals {
        stop: cancel.clone(),
        lost: CancellationToken::new(),
    };
    // Learn which runs ended (cancelled, failed) before taking their steps.
    let (channel, consumer) = follow_run_states(&session, shared).await?;
    let (caught_up, read) = tokio::sync::oneshot::channel();
    consumers.spawn(run_state::follow(
        Arc::clone(&shared.states),
        channel,
        consumer,
        cancel.clone(),
        caught_up,
    ));
    if tokio::time::timeout(CATCH_UP_LIMIT, read).await.is_err() {
        warn!(workflow = %shared.workflow.name(), "run-state stream not read to its end in time; running steps anyway");
    }
    let mut workers = Vec::new();
    for node in shared.workflow.steps() {
        let queue = shared
            .topology
            .step_queue(shared.workflow.name(), node.name());
        // A step limited per runner fetches no more than it may start.
        // A paced step fetches about a fifth of a second's worth ahead.
        let paced_ahead = node
            .fleet_rate()
            .map(|rate| u16::try_from((rate / 5).max(1)).unwrap_or(u16::MAX));
        let prefetch = [node.concurrency(), node.fleet_concurrency(), paced_ahead]
            .into_iter()
            .flatten()
            .fold(shared.prefetch, u16::min);
        let (channel, consumer) = consume_on(&session, &queue, prefetch).await?;
        let worker = Arc::new(StepWorker {
            topology: shared.topology.clone(),
            engine: Arc::clone(&engine),
            states: Arc::clone(&shared.states),
            node: node.clone(),
            publisher: session.publisher.clone(),
            metrics: StepMetrics::new(shared.workflow.name(), node.name()),
            pace: node.fleet_rate().map(Pace::per_second),
        });
        workers.push(Arc::clone(&worker));
        // With priorities, the step's own queue is the `normal` lane; the other lanes beside
        // it, all under one gate that starts a higher class's input first.
        let gate = shared
            .workflow
            .has_priorities()
            .then(|| Arc::new(LaneGate::default()));
        if let Some(gate) = &gate {
            for priority in [Priority::High, Priority::Low] {
                let lane =
                    shared
                        .topology
                        .lane_queue(shared.workflow.name(), node.name(), priority);
                let (channel, consumer) = consume_on(&session, &lane, prefetch).await?;
                consumers.spawn(consume(
                    Arc::clone(&worker),
                    channel,
                    consumer,
                    signals.clone(),
                    shared.tracker.clone(),
                    Arc::clone(&shared.in_flight),
                    Some((priority, Arc::clone(gate))),
                ));
            }
        }
        consumers.spawn(consume(
            worker,
            channel,
            consumer,
            signals.clone(),
            shared.tracker.clone(),
            Arc::clone(&shared.in_flight),
            gate.map(|gate| (Priority::Normal, gate)),
        ));
    }
    // Every runner stands for the schedules' leadership: the schedules `inqubo schedule add`
    // stores need a leader as much as those in the code.
    {
        consumers.spawn(scheduler::run(
            shared.client.clone(),
            shared.workflow.name().clone(),
            Arc::clone(&shared.schedules),
            session.channel().await?,
            session.publisher.clone(),
            Arc::clone(&shared.leadership),
            cancel.clone(),
        ));
    }
    // Inputs whose runner died holding them: one at a time, so that each delivery started.
    let redelivered = shared.topology.redelivered_queue(shared.workflow.name());
    let (channel, consumer) = consume_on(&session, &redelivered, 1).await?;
    consumers.spawn(consume_redelivered(
        workers,
        channel,
        consumer,
        signals.clone(),
        shared.tracker.clone(),
    ));
    let joins = Names::joins(&shared.workflow);
    let held = Arc::new(HeldShards::new(joins.len() * join_shards as usize));
    *shared
        .held_shards
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::clone(&held);
    for join in joins {
        for shard in 0..join_shards {
            let queue = shared
                .topology
                .join_queue(shared.workflow.name(), &join, shard);
            let (channel, consumer) = consume_on(&session, &queue, JOIN_PREFETCH).await?;
            let shard = JoinShard {
                topology: shared.topology.clone(),
                engine: Arc::clone(&engine),
                join: join.clone(),
                shard,
                shards: join_shards,
                publisher: session.publisher.clone(),
                // Each shard reads and trims its journal with single acknowledgements on a
                // channel of its own: away from its consumer's `multiple` acknowledgements, and
                // from the other shards' requests.
                journal_channel: session.channel().await?,
                snapshot_every: shared.join_snapshot_every,
                held: Arc::clone(&held),
            };
            consumers.spawn(consume_shard(shard, channel, consumer, cancel.clone()));
        }
    }
    Ok(Session {
        consumers,
        cancel,
        lost: signals.lost,
    })
}

/// A channel of its own with `prefetch`, consuming `queue`.
async fn consume_on(
    session: &session::Session,
    queue: &QueueName,
    prefetch: u16,
) -> Result<(lapin::Channel, lapin::Consumer)> {
    let channel = session.channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

/// A channel reading the workflow's run-state stream from its first message.
async fn follow_run_states(
    session: &session::Session,
    shared: &Shared,
) -> Result<(lapin::Channel, lapin::Consumer)> {
    let queue = shared.topology.run_state_queue(shared.workflow.name());
    let channel = session.channel().await?;
    channel
        .basic_qos(RUN_STATE_PREFETCH, BasicQosOptions::default())
        .await?;
    let mut args = FieldTable::default();
    args.insert(
        argument::STREAM_OFFSET.into(),
        AMQPValue::LongString(argument::FIRST.into()),
    );
    let consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await?;
    Ok((channel, consumer))
}

/// Keeps a session running until `cancel`, reconnecting whenever a consumer fails.
///
/// Returns an error only for failures that reconnecting cannot fix (see
/// [`Error::is_transient`]).
pub(super) async fn supervise(
    shared: Arc<Shared>,
    mut session: Session,
    cancel: CancellationToken,
) -> Result<()> {
    loop {
        let ended = tokio::select! {
            () = cancel.cancelled() => {
                session.cancel.cancel();
                while session.consumers.join_next().await.is_some() {}
                return Ok(());
            }
            Some(ended) = session.consumers.join_next() => ended,
        };
        let error = match ended {
            Ok(Ok(())) if cancel.is_cancelled() => continue,
            Ok(Ok(())) => Error::ConsumerStopped {
                queue: "unknown".into(),
            },
            Ok(Err(error)) => error,
            Err(join) => Error::task_panicked("queue consumer", join),
        };
        warn!(workflow = %shared.workflow.name(), %error, "connection to the broker lost; reconnecting");
        session.lost.cancel();
        session.cancel.cancel();
        session.consumers.shutdown().await;

        let mut delay = FIRST_RECONNECT_DELAY;
        session = loop {
            let jittered = delay.mul_f64(0.5 + rand::random::<f64>() / 2.0);
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = tokio::time::sleep(jittered) => {}
            }
            // Bounded: a connection lost at the wrong moment can leave a broker call of the
            // setup unanswered; the next attempt starts afresh.
            let started = tokio::time::timeout(
                SESSION_START_TIMEOUT,
                start_session(&shared, cancel.child_token()),
            )
            .await
            .unwrap_or(Err(Error::SessionStartTimeout {
                timeout: SESSION_START_TIMEOUT,
            }));
            match started {
                Ok(session) => {
                    info!(workflow = %shared.workflow.name(), "reconnected; consuming again");
                    crate::metric::reconnected(shared.workflow.name());
                    break session;
                }
                Err(error) if error.is_transient() => {
                    warn!(%error, retry_in = ?delay, "reconnection failed");
                    delay = (delay * 2).min(MAX_RECONNECT_DELAY);
                }
                Err(error) => return Err(error),
            }
        };
    }
}
