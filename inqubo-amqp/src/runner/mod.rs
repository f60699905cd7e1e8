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

use inqubo_core::{RunId, RunOutcome, Workflow, engine::Limits};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

mod builder;
mod supervisor;

pub use builder::RunnerBuilder;

use crate::{
    client::Client,
    error::{Error, Result},
    joiner::HeldShards,
    run_state::RunStates,
    scheduler,
    topology::Topology,
};

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
