//! The settings of a runner, and starting it.

use std::{sync::Arc, time::Duration};

use inqubo_core::{Workflow, engine::Limits};
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{error, info, instrument};

use super::{Runner, Shared, start_session, supervise};
use crate::run_state::RunStates;
use crate::{
    client::Client,
    error::Result,
    session::{DEFAULT_AMQP_URL, split_urls},
    topology::{QueueType, Topology},
};

/// Settings of a [`Runner`]; start from [`Runner::builder`].
#[derive(Debug, Clone)]
pub struct RunnerBuilder {
    workflow: Workflow,
    urls: Vec<String>,
    prefix: String,
    queue_type: QueueType,
    prefetch: u16,
    max_in_flight: usize,
    shutdown_timeout: Duration,
    limits: Limits,
    join_snapshot_every: Option<usize>,
    #[cfg(feature = "prometheus")]
    metrics_addr: Option<std::net::SocketAddr>,
}

impl RunnerBuilder {
    /// Settings for a runner of `workflow`, with defaults.
    pub(super) fn new(workflow: Workflow) -> Self {
        Self {
            workflow,
            urls: vec![DEFAULT_AMQP_URL.to_owned()],
            prefix: inqubo_core::protocol::DEFAULT_PREFIX.to_owned(),
            queue_type: QueueType::default(),
            prefetch: 32,
            max_in_flight: 64,
            shutdown_timeout: Duration::from_secs(30),
            limits: Limits::default(),
            join_snapshot_every: None,
            #[cfg(feature = "prometheus")]
            metrics_addr: None,
        }
    }

    /// The broker address (default [`DEFAULT_AMQP_URL`]); several addresses of one cluster
    /// may be given separated by commas. `amqps://` uses TLS.
    #[must_use]
    pub fn url(mut self, url: impl AsRef<str>) -> Self {
        self.urls = split_urls(url.as_ref());
        self
    }

    /// Several broker addresses of one cluster; the runner fails over between them.
    #[must_use]
    pub fn urls(mut self, urls: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.urls = urls.into_iter().map(Into::into).collect();
        self
    }

    /// The name prefix: the exchange name and the first word of every queue (default
    /// `inqubo`). Every runner and client of one deployment must agree on it.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The queue type (default quorum). Every runner under one prefix must agree on it. With
    /// [`QueueType::Classic`], a retry waiting in a delay tier can be lost if the broker
    /// crashes while forwarding it (classic dead-lettering is at-most-once).
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

    /// How many started attempts of an input may end without an acknowledgement (their runner
    /// died or lost its connection) before it is parked with reason `redelivery_limit` instead
    /// of run again (default 5). This stops a message that crashes its runner from looping.
    ///
    /// A redelivered input first moves to the workflow's redelivered queue, which each runner
    /// takes one input at a time (besides its `max_in_flight`): only starts there count, so the
    /// neighbours a dying runner had fetched are never counted.
    #[must_use]
    pub fn max_redeliveries(mut self, max_redeliveries: u32) -> Self {
        self.limits.max_redeliveries = max_redeliveries;
        self
    }

    /// The largest input a step accepts, and the largest output it may return, in bytes
    /// (default 16 MiB). Larger inputs are parked with reason `too_large` without being
    /// decoded; a larger output fails its attempt for good with the same reason, before
    /// anything is published. Keep it well under the broker's `max_message_size` (128 MiB).
    #[must_use]
    pub fn max_input_bytes(mut self, max_input_bytes: usize) -> Self {
        self.limits.max_input_bytes = max_input_bytes;
        self
    }

    /// Every guard at once (the redelivery limit, the largest input, `started` events): the
    /// same [`Limits`] the in-process harness takes.
    #[must_use]
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Makes the join shards this runner holds write a snapshot to their journal every
    /// `records` batches, whatever their size (default: after
    /// [`SNAPSHOT_AFTER_PIECES`](inqubo_core::journal::SNAPSHOT_AFTER_PIECES) pieces or
    /// [`SNAPSHOT_AFTER_RECORDS`](inqubo_core::journal::SNAPSHOT_AFTER_RECORDS) batches, once
    /// the journal holds half the last snapshot's bytes). For tests and tuning: snapshots
    /// more often make takeovers read less and cost more while running.
    #[must_use]
    pub fn join_snapshot_every(mut self, records: usize) -> Self {
        self.join_snapshot_every = Some(records.max(1));
        self
    }

    /// Whether each attempt publishes `started` (default true). Turning it off saves one
    /// broker message per step, for deployments where nobody watches steps start; every
    /// outcome event is still published.
    #[must_use]
    pub fn publish_started(mut self, publish: bool) -> Self {
        self.limits.publish_started = publish;
        self
    }

    /// Serves Prometheus metrics at `http://<addr>/metrics` from this process (feature
    /// `prometheus`): step counters and durations, in-flight steps, reconnects and publish
    /// confirm latency. It installs the process-wide metrics recorder, so one runner per
    /// process may ask for it; to export elsewhere, install your own `metrics` recorder
    /// before connecting instead.
    ///
    /// ```no_run
    /// # async fn demo(workflow: inqubo_core::Workflow) -> Result<(), inqubo_amqp::Error> {
    /// let runner = inqubo_amqp::Runner::builder(workflow)
    ///     .metrics_addr(([127, 0, 0, 1], 9464).into())
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "prometheus")]
    #[must_use]
    pub fn metrics_addr(mut self, addr: std::net::SocketAddr) -> Self {
        self.metrics_addr = Some(addr);
        self
    }

    /// Connects, declares the topology and starts consuming.
    ///
    /// Errors of this first connection are returned; later connection losses are handled by
    /// reconnecting.
    #[instrument(skip_all, fields(workflow = %self.workflow.name()))]
    pub async fn connect(self) -> Result<Runner> {
        #[cfg(feature = "prometheus")]
        if let Some(addr) = self.metrics_addr {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .with_http_listener(addr)
                .set_buckets(crate::metric::STEP_DURATION_BUCKETS)
                .and_then(metrics_exporter_prometheus::PrometheusBuilder::install)
                .map_err(|source| crate::error::Error::Metrics { addr, source })?;
            info!(%addr, "serving Prometheus metrics at /metrics");
        }
        let topology = Topology::new(self.prefix, self.queue_type)?;
        let client = Client::lazy(self.urls, topology.clone());
        let shared = Arc::new(Shared {
            client: client.clone(),
            workflow: self.workflow.clone(),
            topology,
            prefetch: self.prefetch,
            limits: self.limits,
            join_snapshot_every: self.join_snapshot_every,
            held_shards: std::sync::Mutex::new(Arc::new(crate::joiner::HeldShards::new(0))),
            in_flight: Arc::new(Semaphore::new(self.max_in_flight)),
            tracker: TaskTracker::new(),
            states: Arc::new(RunStates::new(self.workflow.fails_fast())),
        });
        let cancel = CancellationToken::new();
        let first = start_session(&shared, cancel.child_token()).await?;
        info!(
            prefix = shared.topology.prefix(),
            steps = self.workflow.steps().len(),
            prefetch = self.prefetch,
            "runner started"
        );
        let supervised = supervise(Arc::clone(&shared), first, cancel.clone());
        let workflow_name = self.workflow.name().clone();
        let supervisor = tokio::spawn(async move {
            let result = supervised.await;
            if let Err(error) = &result {
                // Also returned by `Runner::run`; logged here for runners nobody awaits.
                error!(workflow = %workflow_name, %error, "runner stopped consuming");
            }
            result
        });
        Ok(Runner {
            shared,
            cancel,
            supervisor,
            shutdown_timeout: self.shutdown_timeout,
        })
    }
}
