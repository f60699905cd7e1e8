//! The RabbitMQ runtime of Inqubo, built on lapin.
//!
//! - [`Topology`] names and declares every exchange, queue and binding.
//! - [`Runner`] consumes a workflow's step queues and runs its steps.
//! - [`Client`] triggers runs and follows their lifecycle events.
//!
//! The path of one message — trigger → step queue → step → outcome events → ack — reads in
//! `client.rs` (trigger), `consumer.rs` (the loop), `wire.rs` (what is published) and
//! `publisher.rs` (confirms). `docs/protocol.md` describes the same path on the wire.
//! `session.rs` connects (several addresses, timeout, TLS) and `event_stream.rs` reads events.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::todo)
)]

mod client;
mod confirm;
mod consumer;
mod error;
mod event_stream;
mod joiner;
mod lane;
mod metric;
#[cfg(feature = "otel")]
pub mod otel;
mod publisher;
mod run_control;
mod run_state;
mod runner;
mod scheduler;
mod session;
mod shutdown;
mod topology;
pub mod wire;

pub use client::Client;
pub use error::{Error, Result};
pub use event_stream::{EventStream, event_from_delivery};
pub use inqubo_core::RunOutcome;
pub use metric::STEP_DURATION_BUCKETS;
pub use run_control::{RESUME_CONFIRM_TIMEOUT, RESUME_SCAN_LIMIT, RESUME_SETTLE, Resumed};
pub use runner::{Runner, RunnerBuilder};
pub use session::{DEFAULT_AMQP_URL, open_connection, redact_url};
pub use shutdown::shutdown_signal;
pub use topology::{QueueType, RUN_STATE_RETENTION, Topology};
