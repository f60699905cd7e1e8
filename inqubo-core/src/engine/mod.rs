//! The rules of a run, written once: a deterministic state machine with no I/O.
//!
//! Every backend — the RabbitMQ runtime in `inqubo-amqp`, the in-process harness in
//! `testing` (feature `test-util`) — is a *driver* of this engine. A driver decodes a delivery
//! into an [`Incoming`](crate::protocol::Incoming), asks the engine what it means, runs the step when told to, hands the
//! result back, and executes the [`Effects`] it gets: publish these messages (each with its
//! destination, routing key, headers and `message_id`), and once the broker has confirmed
//! every one of them, acknowledge the delivery. The engine never reads a clock, a socket or a
//! random number generator; whatever it needs of them (a `traceparent`) comes in as a value.
//!
//! ```text
//!             ┌──────────── driver (lapin, or in-memory) ─────────────┐
//! delivery ──▶│ Incoming ─▶ engine.admit ─┬─▶ Settle(effects) ────────┼─▶ publish, confirm, ack
//!             │                           └─▶ Run(admitted)           │
//!             │   trace ─▶ admitted.attempt(trace) ─▶ run_attempt ──┐ │
//!             │   engine.finished(attempt, outcome) ◀───────────────┘ │
//!             │     └─▶ effects ──────────────────────────────────────┼─▶ publish, confirm, ack
//!             │   unroutable? engine.unroutable(attempt) ─▶ effects ──┼─▶ publish, confirm, ack
//!             └───────────────────────────────────────────────────────┘
//! join piece ─▶ engine.join_piece(book, incoming, trace) ─▶ effects, then the book's snapshot
//! ```
//!
//! The rules, in the order a delivery meets them:
//!
//! 1. **Refusals** ([`Engine::admit`]): an input larger than [`Limits::max_input_bytes`] is
//!    parked as `too_large`; one delivered more than [`Limits::max_redeliveries`] times
//!    without an acknowledgement is parked as `redelivery_limit`; a redelivery on a queue that
//!    does not count redeliveries itself (classic) is sent round again with its count; a
//!    message without a usable `run-id` or `retry-attempt` is parked as `undecodable`.
//! 2. **An attempt** ([`Engine::started`], then [`Engine::finished`]): `started`, then
//!    `succeeded` with the output, a piece for every join child, and the run's end if this is
//!    a last step; or `retrying` and the input into the delay tiers; or `failed`, the input
//!    parked, and the news of the failure to the run's end and every join downstream.
//! 3. **Unroutable outcomes** ([`Engine::unroutable`]): if the broker returns a mandatory
//!    message (no queue bound to its key), the step fails for good as `unroutable`.
//! 4. **Joins** ([`Engine::join_piece`]): a piece is added to its shard's
//!    [`JoinBook`](crate::join::JoinBook); what fires is published (the join step's
//!    input, `run.succeeded`, or `run.failed` once).
//!
//! A run's state beyond its joins (cancelled, resumed) will enter the same way: as one more
//! input the engine consults, never as a rule in a driver.

mod admission;
mod join;
mod step;

pub use admission::{Admission, Attempt};

use crate::{event::FailedBody, name::StepName, protocol::Outgoing, workflow::Workflow};

/// What a driver must do after handing the engine a delivery or an outcome: publish every
/// message (and every input of [`Effects::fan_out`], a window at a time), wait until the
/// broker has confirmed all of them, then acknowledge the delivery.
///
/// If a publish fails, the driver must not acknowledge: it returns the delivery to its queue,
/// and the broker delivers it again (at least once, never lost).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    /// The messages to publish, in order.
    pub publish: Vec<Outgoing>,
    /// When the delivery is parked: why (for logs and metrics; the parked message is among
    /// [`Effects::publish`]).
    pub failure: Option<FailedBody>,
    /// The inputs of a map's elements, to publish after [`Effects::publish`], in windows
    /// ([`FanOut::inputs`](crate::protocol::FanOut::inputs)).
    pub fan_out: Option<Box<crate::protocol::FanOut>>,
}

impl Effects {
    /// Effects that publish `messages`.
    pub fn publish(messages: Vec<Outgoing>) -> Self {
        Self {
            publish: messages,
            failure: None,
            fan_out: None,
        }
    }

    /// The message bound for the parked queue, if the delivery is parked.
    pub fn parked(&self) -> Option<&Outgoing> {
        self.publish
            .iter()
            .find(|m| matches!(m.destination, crate::protocol::Destination::Parked(_)))
    }
}

/// What a driver knows of a run that ended elsewhere, from the run-state feed (the
/// `run.failed` and `run.cancelled` events every runner follows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunEnd {
    /// How it ended.
    pub how: RunEnding,
    /// The generation that ended.
    pub generation: u32,
}

/// What a driver knows of a run from the run-state feed: how it ended, if it did, and the
/// newest generation a resume started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunState {
    /// The newest end heard of (`run.failed`, `run.cancelled`).
    pub end: Option<RunEnd>,
    /// The newest generation a resume started (`run.resumed`); 0 if none.
    pub resumed: u32,
}

impl RunState {
    /// Takes in an end; an older generation's never replaces a newer one's.
    pub fn ended(&mut self, end: RunEnd) {
        if self
            .end
            .is_none_or(|known| end.generation >= known.generation)
        {
            self.end = Some(end);
        }
    }

    /// Takes in a resume to `generation`.
    pub fn resumed(&mut self, generation: u32) {
        self.resumed = self.resumed.max(generation);
    }
}

/// How a run ended, as far as its remaining steps care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunEnding {
    /// A step failed for good (`run.failed`); a resume starts a later generation.
    Failed,
    /// The run was cancelled (`run.cancelled`); it never runs again.
    Cancelled,
}

/// Guards against inputs that must not be run, and what attempts announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Started attempts without an acknowledgement, counted in the redelivered queue, after
    /// which an input is parked instead of run (default 5); see [`Engine::admit_redelivered`].
    pub max_redeliveries: u32,
    /// The largest input accepted, in bytes (default 16 MiB).
    pub max_input_bytes: usize,
    /// Whether attempts announce themselves with `started` (default true).
    pub publish_started: bool,
    /// How long joins remember runs that ended (default: a day, a week for failed runs).
    pub run_memory: crate::join::RunMemory,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_redeliveries: 5,
            max_input_bytes: 16 * 1024 * 1024,
            publish_started: true,
            run_memory: crate::join::RunMemory::default(),
        }
    }
}

/// The rules of one workflow's runs; see the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Engine {
    workflow: Workflow,
    limits: Limits,
    /// The last steps, whose outputs end a run.
    leaves: Vec<StepName>,
}

impl Engine {
    /// The engine of `workflow`'s runs under `limits`.
    pub fn new(workflow: Workflow, limits: Limits) -> Self {
        let leaves = workflow.leaves().map(|s| s.name().clone()).collect();
        Self {
            workflow,
            limits,
            leaves,
        }
    }

    /// The workflow.
    pub fn workflow(&self) -> &Workflow {
        &self.workflow
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The priority class of the run `incoming` belongs to: its `run-priority` for a
    /// workflow with priorities, `normal` otherwise.
    pub fn priority_of(&self, incoming: &crate::protocol::Incoming<'_>) -> crate::Priority {
        if self.workflow.has_priorities() {
            incoming.priority()
        } else {
            crate::Priority::Normal
        }
    }
}

#[cfg(test)]
mod tests;
