//! # Inqubo
//!
//! Workflows of async Rust steps, choreographed over RabbitMQ.
//!
//! A workflow is a graph of steps. Each step is an `async fn` over serde values with its own
//! queue, bound to its parent's `succeeded` event; every step publishes its lifecycle events
//! (`started`, `succeeded`, `retrying`, `failed`) on one topic exchange. There is no central
//! scheduler: start as many runners as you like and RabbitMQ balances the work between them.
//! Retries wait in RabbitMQ's TTL delay queues, not in memory.
//!
//! ```no_run
//! use std::time::Duration;
//! use inqubo::{RetryPolicy, RunId, Runner, Step, StepContext, StepError, Workflow};
//!
//! async fn fetch(_: (), _: StepContext) -> Result<Vec<u32>, StepError> { Ok(vec![1, 2]) }
//! async fn total(v: Vec<u32>, _: StepContext) -> Result<u32, StepError> { Ok(v.iter().sum()) }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let flow = Workflow::builder("totals")
//!     .start(Step::new("fetch", fetch))
//!     .then(Step::new("total", total).retry(RetryPolicy::limited(5, Duration::from_secs(2))))
//!     .build()?;
//! let runner = Runner::connect(inqubo::DEFAULT_AMQP_URL, flow).await?;
//! runner.trigger(RunId::new("run-1")?, &()).await?;
//! runner.run(async { tokio::signal::ctrl_c().await.ok(); }).await?;
//! # Ok(()) }
//! ```
//!
//! The wire protocol (exchange, routing keys, headers, bodies) is public and documented in
//! `docs/protocol.md`: any AMQP 0-9-1 client can trigger runs and follow their events.

pub use inqubo_amqp::{
    Client, DEFAULT_AMQP_URL, DELAY_TICK, DELAY_TIERS, DelayRoute, Error, EventStream, MAX_DELAY,
    QueueName, QueueType, Result, RunOutcome, Runner, RunnerBuilder, STEP_DURATION_BUCKETS,
    Topology, event_from_delivery, open_connection, redact_url,
};
pub use inqubo_core::{
    AttemptOutcome, Chain, DEFAULT_STEP_TIMEOUT, EventKind, ExponentialBackoff, FailedBody,
    FailureReason, JoinShape, LifecycleEvent, LimitedRetries, NoRetries, RetryPolicy, RetrySpec,
    RetryStrategy, RetryingBody, RoutingKey, RunFailedBody, RunId, StartedBody, Step, StepContext,
    StepError, StepFn, StepName, Workflow, WorkflowDefinition, WorkflowError, WorkflowName,
    protocol,
};

/// OpenTelemetry: step spans join their run's trace; `otel::init_otlp` exports them.
#[cfg(feature = "otel")]
pub use inqubo_amqp::otel;

/// Run workflows in-process, without a broker: see [`testing::TestRunner`].
#[cfg(feature = "test-util")]
pub use inqubo_core::testing;
