//! The runner: declares a workflow's topology and consumes each of its step queues.
//!
//! Start as many runners of the same workflow as you like, in as many processes: they share
//! every step's queue, so RabbitMQ spreads the work between them.
//!
//! A runner survives the loss of its connection. A supervisor task watches the step consumers
//! of the current *session* (one connection); when they fail it logs a warning, waits with
//! exponential backoff, reconnects (trying each broker address in turn), declares the topology
//! again and resumes consuming. Attempts that were running on the lost connection cannot
//! acknowledge their input, so the broker redelivers it: at least once, never lost.

use std::{future::Future, sync::Arc, time::Duration};

use inqubo_core::{
    Priority, RunId, RunOutcome, Workflow,
    engine::{Engine, Limits},
    protocol::{self, Names, QueueName, argument},
};
use lapin::{
    options::{BasicConsumeOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable},
};
use serde::Serialize;
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

mod builder;

pub use builder::RunnerBuilder;

use crate::{
    client::Client,
    consumer::{LaneGate, Pace, Signals, StepWorker, consume, consume_redelivered},
    error::{Error, Result},
    joiner::{HeldShards, JoinShard, consume_shard},
    metric::StepMetrics,
    run_state::{self, RunStates},
    scheduler, session,
    topology::Topology,
    wire::Wire,
};

/// Unacknowledged pieces a join shard consumer may hold: one batch and the next.
const JOIN_PREFETCH: u16 = 512;

/// The first wait before reconnecting; it doubles up to [`MAX_RECONNECT_DELAY`].
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(100);

/// The longest wait between two reconnection attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(10);

/// What every session of a runner shares.
#[derive(Debug)]
struct Shared {
    client: Client,
    workflow: Workflow,
    topology: Topology,
    prefetch: u16,
    limits: Limits,
    /// See [`RunnerBuilder::join_snapshot_every`].
    join_snapshot_every: Option<usize>,
    /// The join shards the current session holds.
    held_shards: std::sync::Mutex<Arc<HeldShards>>,
    in_flight: Arc<Semaphore>,
    tracker: TaskTracker,
    /// What this runner knows of runs that ended; kept across reconnections.
    states: Arc<RunStates>,
    /// The workflow's cron schedules this runner fires when it leads.
    schedules: Arc<Vec<inqubo_core::schedule::Schedule>>,
    /// Whether it leads them now.
    leadership: Arc<scheduler::Leadership>,
}

/// How long reconnecting (declaring, announcing, starting the consumers) may take before the
/// attempt is abandoned and another one starts.
const SESSION_START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a runner that just connected waits to read the run-state stream to its end
/// before it runs steps anyway.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(5);

/// Unacknowledged run-state events the runner holds while reading the stream.
const RUN_STATE_PREFETCH: u16 = 500;

/// The step consumers of one connection, and the token that stops them.
struct Session {
    consumers: JoinSet<Result<()>>,
    cancel: CancellationToken,
    /// Cancelled when the connection is lost: attempts still running on it are dropped.
    lost: CancellationToken,
}

/// Connects (if needed), declares the topology and starts one consumer per step.
async fn start_session(shared: &Shared, cancel: CancellationToken) -> Result<Session> {
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
        if shared.workflow.has_priorities() {
            // The step's own queue is the `normal` lane; the other lanes beside it, all
            // under one gate that starts a higher class's input first.
            let gate = Arc::new(LaneGate::default());
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
                    Some((priority, Arc::clone(&gate))),
                ));
            }
            consumers.spawn(consume(
                worker,
                channel,
                consumer,
                signals.clone(),
                shared.tracker.clone(),
                Arc::clone(&shared.in_flight),
                Some((Priority::Normal, gate)),
            ));
        } else {
            consumers.spawn(consume(
                worker,
                channel,
                consumer,
                signals.clone(),
                shared.tracker.clone(),
                Arc::clone(&shared.in_flight),
                None,
            ));
        }
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
async fn supervise(
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

/// Runs the steps of one workflow: consumes their queues, runs attempts, publishes outcomes.
///
/// Keep it until you call [`Runner::run`] or [`Runner::shutdown`]: dropping it stops it.
///
/// ```no_run
/// # async fn demo(flow: inqubo_core::Workflow) -> Result<(), inqubo_amqp::Error> {
/// use inqubo_amqp::Runner;
///
/// let runner = Runner::connect("amqp://guest:guest@127.0.0.1:5672/%2f", flow).await?;
/// runner.trigger(inqubo_core::RunId::new("run-42")?, &()).await?;
/// runner.run(async { tokio::signal::ctrl_c().await.ok(); }).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Runner {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    supervisor: tokio::task::JoinHandle<Result<()>>,
    shutdown_timeout: Duration,
}

impl Runner {
    /// Settings for a runner of `workflow`, with defaults.
    pub fn builder(workflow: Workflow) -> RunnerBuilder {
        RunnerBuilder::new(workflow)
    }

    /// Connects to `url` with default settings, declares the topology and starts consuming.
    pub async fn connect(url: &str, workflow: Workflow) -> Result<Self> {
        Self::builder(workflow).url(url).connect().await
    }

    /// The workflow this runner runs.
    pub fn workflow(&self) -> &Workflow {
        &self.shared.workflow
    }

    /// How many join shards this runner holds now: those it is the active consumer of, with
    /// their book loaded. A runner holding more than its share of the runners consuming them
    /// hands the extra ones over (checked every 2 s), so join work spreads over the fleet.
    pub fn join_shards_held(&self) -> usize {
        self.shared
            .held_shards
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .held()
    }

    /// Whether this runner fires the workflow's cron schedules now: of all the runners given
    /// schedules, one leads at a time (see [`RunnerBuilder::schedule`]).
    pub fn leads_schedules(&self) -> bool {
        self.shared.leadership.is_leader()
    }

    /// A client on this runner's connection, to trigger runs or follow events.
    pub fn client(&self) -> &Client {
        &self.shared.client
    }

    /// Starts a run of this runner's workflow; see [`Client::trigger`].
    pub async fn trigger(&self, run_id: RunId, input: &impl Serialize) -> Result<RunId> {
        self.shared
            .client
            .trigger(self.shared.workflow.name(), run_id, input)
            .await
    }

    /// Starts a run of this runner's workflow and waits for its end; see
    /// [`Client::trigger_and_wait`].
    pub async fn trigger_and_wait(
        &self,
        run_id: RunId,
        input: &impl Serialize,
        timeout: Duration,
    ) -> Result<RunOutcome> {
        self.shared
            .client
            .trigger_and_wait(self.shared.workflow.name(), run_id, input, timeout)
            .await
    }

    /// Serves until `shutdown` completes, then shuts down gracefully.
    ///
    /// Returns early with the error if the runner cannot go on (for example when the topology
    /// on the broker does not match its own).
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let failure = tokio::select! {
            () = shutdown => None,
            ended = &mut self.supervisor => Some(match ended {
                Ok(result) => result.err(),
                Err(join) => Some(Error::task_panicked("runner supervisor", join)),
            }),
        };
        match failure {
            None => self.shutdown().await,
            Some(failure) => {
                self.finish().await;
                failure.map_or(Ok(()), Err)
            }
        }
    }

    /// Stops consuming, lets attempts in flight finish and publish their outcome (up to the
    /// shutdown timeout), then closes the connection. Unfinished deliveries go back to their
    /// queues.
    ///
    /// Shuts down in any case, and then returns the error that had already stopped the runner,
    /// if one had (as [`Runner::run`] would have), or [`Error::TaskPanicked`] if its supervisor
    /// panicked.
    pub async fn shutdown(mut self) -> Result<()> {
        self.cancel.cancel();
        let supervised = match (&mut self.supervisor).await {
            Ok(result) => result,
            Err(join) => Err(Error::task_panicked("runner supervisor", join)),
        };
        self.finish().await;
        supervised
    }

    async fn finish(&self) {
        self.cancel.cancel();
        self.shared.tracker.close();
        if tokio::time::timeout(self.shutdown_timeout, self.shared.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                timeout = ?self.shutdown_timeout,
                "attempts still running at shutdown; their inputs will be redelivered"
            );
        }
        if let Err(error) = self.shared.client.close().await {
            warn!(%error, "closing the connection failed");
        }
        info!(workflow = %self.shared.workflow.name(), "runner stopped");
    }
}

impl Drop for Runner {
    /// A runner dropped without [`Runner::shutdown`] or [`Runner::run`] stops consuming at once;
    /// deliveries it had not acknowledged go back to their queues when its channels close.
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
