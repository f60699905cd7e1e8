//! The runner: declares a workflow's topology and consumes each of its step queues.
//!
//! Start as many runners of the same workflow as you like, in as many processes: they share
//! every step's queue, so RabbitMQ spreads the work between them.

use std::{future::Future, sync::Arc, time::Duration};

use inqubo_core::{RunId, Workflow};
use lapin::{
    options::{BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use serde::Serialize;
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, instrument, warn};

use crate::{
    client::{Client, DEFAULT_AMQP_URL},
    consumer::{StepWorker, consume},
    error::{Error, Result},
    topology::{QueueType, Topology},
};

/// Settings of a [`Runner`]; start from [`Runner::builder`].
#[derive(Debug, Clone)]
pub struct RunnerBuilder {
    workflow: Workflow,
    url: String,
    prefix: String,
    queue_type: QueueType,
    prefetch: u16,
    max_in_flight: usize,
    shutdown_timeout: Duration,
}

impl RunnerBuilder {
    /// The broker address (default [`DEFAULT_AMQP_URL`]). `amqps://` uses TLS.
    #[must_use]
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }

    /// The name prefix: the exchange name and the first word of every queue (default
    /// `inqubo`). Every runner and client of one deployment must agree on it.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The queue type (default quorum). Every runner under one prefix must agree on it.
    #[must_use]
    pub fn queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    /// How many unacknowledged deliveries each step's queue hands this runner (default 32).
    #[must_use]
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// How many step attempts this runner runs at once, across all steps (default 64).
    #[must_use]
    pub fn max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.max_in_flight = max_in_flight.max(1);
        self
    }

    /// How long shutdown waits for attempts in flight before abandoning them to redelivery
    /// (default 30 seconds).
    #[must_use]
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Connects, declares the topology and starts consuming.
    #[instrument(skip_all, fields(workflow = %self.workflow.name()))]
    pub async fn connect(self) -> Result<Runner> {
        let topology = Topology::new(self.prefix, self.queue_type)?;
        let client = Client::connect_with(&self.url, topology.clone()).await?;
        let setup = client.channel().await?;
        topology.declare_shared(&setup).await?;
        topology.declare_workflow(&setup, &self.workflow).await?;
        drop(setup);

        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let in_flight = Arc::new(Semaphore::new(self.max_in_flight));
        let mut consumers = JoinSet::new();
        for node in self.workflow.steps() {
            let channel = client.channel().await?;
            channel
                .basic_qos(self.prefetch, BasicQosOptions::default())
                .await?;
            let queue = topology.step_queue(self.workflow.name(), node.name());
            let consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let worker = Arc::new(StepWorker {
                topology: topology.clone(),
                workflow: self.workflow.name().clone(),
                node: node.clone(),
                publisher: client.publisher().clone(),
            });
            consumers.spawn(consume(
                worker,
                channel,
                consumer,
                cancel.clone(),
                tracker.clone(),
                Arc::clone(&in_flight),
            ));
        }
        info!(
            prefix = topology.prefix(),
            steps = self.workflow.steps().len(),
            prefetch = self.prefetch,
            "runner started"
        );
        Ok(Runner {
            client,
            workflow: self.workflow,
            cancel,
            tracker,
            consumers,
            shutdown_timeout: self.shutdown_timeout,
        })
    }
}

/// Runs the steps of one workflow: consumes their queues, runs attempts, publishes outcomes.
///
/// ```no_run
/// # async fn demo(flow: inqubo_core::Workflow) -> Result<(), inqubo_amqp::Error> {
/// use inqubo_amqp::Runner;
///
/// let runner = Runner::connect("amqp://guest:guest@127.0.0.1:5672/%2f", flow).await?;
/// runner.trigger("run-42", &()).await?;
/// runner.run(async { tokio::signal::ctrl_c().await.ok(); }).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Runner {
    client: Client,
    workflow: Workflow,
    cancel: CancellationToken,
    tracker: TaskTracker,
    consumers: JoinSet<Result<()>>,
    shutdown_timeout: Duration,
}

impl Runner {
    /// Settings for a runner of `workflow`, with defaults.
    pub fn builder(workflow: Workflow) -> RunnerBuilder {
        RunnerBuilder {
            workflow,
            url: DEFAULT_AMQP_URL.to_owned(),
            prefix: inqubo_core::protocol::DEFAULT_PREFIX.to_owned(),
            queue_type: QueueType::default(),
            prefetch: 32,
            max_in_flight: 64,
            shutdown_timeout: Duration::from_secs(30),
        }
    }

    /// Connects to `url` with default settings, declares the topology and starts consuming.
    pub async fn connect(url: &str, workflow: Workflow) -> Result<Self> {
        Self::builder(workflow).url(url).connect().await
    }

    /// The workflow this runner runs.
    pub fn workflow(&self) -> &Workflow {
        &self.workflow
    }

    /// A client on this runner's connection, to trigger runs or follow events.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Starts a run of this runner's workflow; see [`Client::trigger`].
    pub async fn trigger(
        &self,
        run_id: impl Into<String>,
        input: &impl Serialize,
    ) -> Result<RunId> {
        self.client
            .trigger(self.workflow.name().as_str(), run_id, input)
            .await
    }

    /// Serves until `shutdown` completes, then shuts down gracefully.
    ///
    /// Returns early with the error if a step's consumer fails (for example when the
    /// connection to the broker is lost).
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let failure = tokio::select! {
            () = shutdown => None,
            Some(ended) = self.consumers.join_next() => Some(match ended {
                Ok(Ok(())) => Error::ConsumerStopped { queue: "unknown".into() },
                Ok(Err(error)) => error,
                Err(join) => Error::ConsumerStopped { queue: join.to_string() },
            }),
        };
        if let Some(error) = &failure {
            warn!(%error, "a step consumer stopped; shutting down");
        }
        self.shutdown().await?;
        failure.map_or(Ok(()), Err)
    }

    /// Stops consuming, lets attempts in flight finish and publish their outcome (up to the
    /// shutdown timeout), then closes the connection. Unfinished deliveries go back to their
    /// queues.
    pub async fn shutdown(mut self) -> Result<()> {
        self.cancel.cancel();
        while let Some(ended) = self.consumers.join_next().await {
            if let Ok(Err(error)) = ended {
                warn!(%error, "consumer did not stop cleanly");
            }
        }
        self.tracker.close();
        if tokio::time::timeout(self.shutdown_timeout, self.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                timeout = ?self.shutdown_timeout,
                "attempts still running at shutdown; their inputs will be redelivered"
            );
        }
        self.client.close().await?;
        info!(workflow = %self.workflow.name(), "runner stopped");
        Ok(())
    }
}
