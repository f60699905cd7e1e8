//! The broker-independent core of Inqubo.
//!
//! It defines what a workflow *is* — a validated graph of typed async [`Step`]s with
//! [`RetryPolicy`]s — and what one attempt of a step *does* ([`run_attempt`]), without
//! knowing anything about RabbitMQ; and the rules of a run ([`engine::Engine`]), a state
//! machine without I/O that every backend drives. The AMQP runtime in `inqubo-amqp` moves
//! messages; this crate decides what the messages are and what they mean.
//!
//! Most users depend on the `inqubo` facade crate instead, which re-exports everything here.
//!
//! | module | what it holds |
//! |---|---|
//! | `name` | [`WorkflowName`], [`StepName`], [`RunId`]: validated identifiers |
//! | `step` | [`Step`], [`StepFn`], [`StepContext`], [`StepError`] |
//! | `retry` | [`RetryPolicy`] and the built-in strategies |
//! | `workflow` | [`Workflow`] and its typed builder |
//! | `event` | [`LifecycleEvent`] and the JSON bodies of events |
//! | `protocol` | the wire protocol: names, routing keys, headers, every message |
//! | `engine` | [`engine::Engine`]: what a delivery and an attempt's outcome call for |
//! | `attempt` | [`run_attempt`]: one attempt of a step (decode, call, timeout, retry policy) |
//! | `testing` | (feature `test-util`) `testing::TestRunner`: the engine driven in memory |
//! | `trace` | W3C `traceparent` values: one run, one trace |
//! | `join` | [`join::JoinBook`]: which parents of which runs reported, and when a join fires |

#![cfg_attr(docsrs, feature(doc_cfg))]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::todo)
)]

mod attempt;
pub mod engine;
mod event;
pub mod join;
pub mod journal;
mod name;
pub mod priority;
pub mod protocol;
mod retry;
pub mod schedule;
mod step;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod trace;
mod workflow;

pub use attempt::{AttemptOutcome, run_attempt};
pub use event::{
    EventDecodeError, EventKind, FailedBody, FailureReason, LifecycleEvent, RetryingBody,
    RunCancelledBody, RunDuplicateBody, RunFailedBody, RunOutcome, RunResumedBody, SkippedBody,
    StartedBody,
};
pub use name::{
    MAX_NAME_LEN, MAX_RUN_ID_LEN, NameError, RESERVED_STEP_NAMES, RunId, StepName, WorkflowName,
};
pub use priority::Priority;
pub use protocol::RoutingKey;
pub use retry::{
    ExponentialBackoff, LimitedRetries, NoRetries, RetryPolicy, RetrySpec, RetryStrategy,
};
pub use step::{
    DEFAULT_STEP_TIMEOUT, DecodeError, MAX_STEP_TIMEOUT, Step, StepContext, StepError, StepFn,
};
pub use workflow::{
    Chain, Edge, JoinShape, NotStarted, Stage, StageSpec, StepDefinition, StepNode, Workflow,
    WorkflowBuilder, WorkflowDefinition, WorkflowError,
};
