//! The settings of a runner, and starting it.

use std::{sync::Arc, time::Duration};

use inqubo_core::{Workflow, engine::Limits};
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{error, info, instrument};

use super::{
    Runner, Shared,
    supervisor::{start_session, supervise},
};
use crate::run_state::RunStates;
use crate::{
    client::Client,
    error::{Error, Result},
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
    schedules: Vec<inqubo_core::schedule::Schedule>,
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
            schedules: Vec::new(),
            #[cfg(feature = "prometheus")]
            metrics_addr: None,
        }
    }

    /// Settings for a runner of `workflow` from the environment, the same variables the
    /// `inqubo` command line reads; each one unset keeps its default:
    ///
    /// | variable | setting |
    /// |---|---|
    /// | `AMQP_URL` | [`RunnerBuilder::url`] (comma-separated addresses of one cluster) |
    /// | `INQUBO_PREFIX` | [`RunnerBuilder::prefix`] |
    /// | `INQUBO_QUEUE_TYPE` | [`RunnerBuilder::queue_type`]: `quorum` or `classic` |
    /// | `INQUBO_PREFETCH` | [`RunnerBuilder::prefetch`] |
    /// | `INQUBO_MAX_IN_FLIGHT` | [`RunnerBuilder::max_in_flight`] |
    ///
    /// A value that does not parse is an [`Error::Environment`](crate::Error::Environment)
    /// naming the variable, not a silent default.
    ///
    /// ```no_run
    /// # async fn demo(flow: inqubo_core::Workflow) -> Result<(), inqubo_amqp::Error> {
    /// use inqubo_amqp::{RunnerBuilder, shutdown_signal};
    ///
    /// let runner = RunnerBuilder::from_env(flow)?.max_redeliveries(3).connect().await?;
    /// runner.run(shutdown_signal()).await
    /// # }
    /// ```
    pub fn from_env(workflow: Workflow) -> Result<Self> {
        Self::from_variables(workflow, |name| std::env::var(name).ok())
    }

    /// [`RunnerBuilder::from_env`] over any source of variables.
    fn from_variables(workflow: Workflow, read: impl Fn(&str) -> Option<String>) -> Result<Self> {
        fn number<T: std::str::FromStr>(variable: &'static str, value: String) -> Result<T> {
            value.trim().parse().map_err(|_| Error::Environment {
                variable,
                value,
                expected: "a whole number",
            })
        }
        let mut builder = Self::new(workflow);
        if let Some(url) = read("AMQP_URL") {
            builder = builder.url(url);
        }
        if let Some(prefix) = read("INQUBO_PREFIX") {
            builder = builder.prefix(prefix);
        }
        if let Some(kind) = read("INQUBO_QUEUE_TYPE") {
            let queue_type = match kind.trim() {
                "quorum" => QueueType::Quorum,
                "classic" => QueueType::Classic,
                _ => {
                    return Err(Error::Environment {
                        variable: "INQUBO_QUEUE_TYPE",
                        value: kind,
                        expected: "`quorum` or `classic`",
                    });
                }
            };
            builder = builder.queue_type(queue_type);
        }
        if let Some(prefetch) = read("INQUBO_PREFETCH") {
            builder = builder.prefetch(number("INQUBO_PREFETCH", prefetch)?);
        }
        if let Some(limit) = read("INQUBO_MAX_IN_FLIGHT") {
            builder = builder.max_in_flight(number("INQUBO_MAX_IN_FLIGHT", limit)?);
        }
        Ok(builder)
    }

    /// Starts runs of the workflow at the times of a cron schedule. Give every runner of the
    /// workflow the same schedules: one of them leads at a time and fires each tick once (the
    /// leader is elected through a single-active-consumer queue, `<prefix>.<workflow>.scheduler`;
    /// [`Runner::leads_schedules`] says which). A tick's run id is `<schedule>@<time>`, so a
    /// tick fired twice around a change of leader starts one run (with unique runs, the
    /// default). A runner that becomes leader fires each schedule's latest tick once if it is
    /// within the schedule's catch-up window (an hour by default), so a tick missed while no
    /// runner was up runs late rather than never; older ticks are skipped. See
    /// docs/scheduling.md.
    ///
    /// ```no_run
    /// # async fn demo(flow: inqubo_core::Workflow) -> Result<(), Box<dyn std::error::Error>> {
    /// use inqubo_amqp::RunnerBuilder;
    /// use inqubo_core::schedule::Schedule;
    ///
    /// let runner = RunnerBuilder::from_env(flow)?
    ///     .schedule(Schedule::cron("nightly", "0 2 * * *")?.in_time_zone("Europe/Berlin")?)
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn schedule(mut self, schedule: inqubo_core::schedule::Schedule) -> Self {
        self.schedules.retain(|s| s.name() != schedule.name());
        self.schedules.push(schedule);
        self
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
            schedules: Arc::new(self.schedules),
            leadership: Arc::default(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use inqubo_core::{Step, StepContext, StepError};

    fn flow() -> Workflow {
        async fn id(n: u32, _: StepContext) -> std::result::Result<u32, StepError> {
            Ok(n)
        }
        Workflow::builder("env")
            .start(Step::new("a", id))
            .build()
            .unwrap()
    }

    fn from(pairs: &[(&str, &str)]) -> Result<RunnerBuilder> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        RunnerBuilder::from_variables(flow(), |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn the_environment_sets_what_it_names_and_nothing_else() {
        let builder = from(&[
            ("AMQP_URL", "amqp://a:5672/%2f, amqp://b:5672/%2f"),
            ("INQUBO_PREFIX", "staging"),
            ("INQUBO_QUEUE_TYPE", "classic"),
            ("INQUBO_PREFETCH", "8"),
            ("INQUBO_MAX_IN_FLIGHT", " 16 "),
        ])
        .unwrap();
        assert_eq!(builder.urls, ["amqp://a:5672/%2f", "amqp://b:5672/%2f"]);
        assert_eq!(builder.prefix, "staging");
        assert_eq!(builder.queue_type, QueueType::Classic);
        assert_eq!((builder.prefetch, builder.max_in_flight), (8, 16));
        let defaults = from(&[]).unwrap();
        assert_eq!(defaults.urls, [DEFAULT_AMQP_URL]);
        assert_eq!(defaults.prefix, inqubo_core::protocol::DEFAULT_PREFIX);
        assert_eq!((defaults.prefetch, defaults.max_in_flight), (32, 64));
    }

    #[test]
    fn a_value_that_does_not_parse_names_its_variable() {
        let error = from(&[("INQUBO_PREFETCH", "lots")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "environment variable INQUBO_PREFETCH=\"lots\": a whole number"
        );
        let error = from(&[("INQUBO_QUEUE_TYPE", "stream")]).unwrap_err();
        assert!(matches!(
            error,
            Error::Environment {
                variable: "INQUBO_QUEUE_TYPE",
                ..
            }
        ));
    }
}
