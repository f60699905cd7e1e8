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
//! runner.run(inqubo::shutdown_signal()).await?;
//! # Ok(()) }
//! ```
//!
//! The wire protocol (exchange, routing keys, headers, bodies) is public and documented in
//! `docs/protocol.md`: any AMQP 0-9-1 client can trigger runs and follow their events.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub use inqubo_amqp::{
    Client, DEFAULT_AMQP_URL, Error, EventStream, QueueType, RESUME_CONFIRM_TIMEOUT,
    RESUME_SCAN_LIMIT, RESUME_SETTLE, Result, Resumed, Runner, RunnerBuilder,
    STEP_DURATION_BUCKETS, Topology, open_connection, redact_url, shutdown_signal,
};
pub use inqubo_core::schedule::{Schedule, ScheduleDefinition, ScheduleError};
pub use inqubo_core::{
    Chain, DEFAULT_STEP_TIMEOUT, DecodeError, EventDecodeError, EventKind, ExponentialBackoff,
    FailedBody, FailureReason, JoinShape, LifecycleEvent, LimitedRetries, MAX_STEP_TIMEOUT,
    NameError, NoRetries, Priority, RetryPolicy, RetrySpec, RetryStrategy, RetryingBody,
    RunCancelledBody, RunFailedBody, RunId, RunOutcome, SkippedBody, StartedBody, Step,
    StepContext, StepError, StepFn, StepName, StepNode, Workflow, WorkflowBuilder,
    WorkflowDefinition, WorkflowError, WorkflowName,
};

/// The wire protocol in code: names, routing keys, headers, messages, delay tiers;
/// [`protocol::event_from_delivery`] to read a lifecycle event from a lapin delivery; and
/// [`protocol::wire`] to publish messages and read deliveries with lapin. For tools and
/// clients that speak to Inqubo's exchange themselves.
pub mod protocol {
    pub use inqubo_amqp::{event_from_delivery, wire};
    pub use inqubo_core::protocol::*;
}

/// The rules of a run, as a state machine without I/O: what the runtime and the test
/// harness both obey.
pub use inqubo_core::engine;
/// The state of join shards and its journal (what a runner keeps, and how it survives it).
pub use inqubo_core::{join, journal};

/// OpenTelemetry: step spans join their run's trace; `otel::init_otlp` exports them.
#[cfg(feature = "otel")]
pub use inqubo_amqp::otel;

/// Run workflows in-process, without a broker: see [`testing::TestRunner`].
#[cfg(feature = "test-util")]
pub use inqubo_core::testing;

/// The README's Rust snippets, compiled as doc tests (`cargo test --doc -p inqubo --features
/// test-util`), so that what users copy from it builds.
#[cfg(all(doctest, feature = "test-util"))]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
