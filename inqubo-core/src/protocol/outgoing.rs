//! What every message Inqubo publishes shares ([`Outgoing`], [`Destination`]), and the messages
//! of a run's progress: triggers, lifecycle events, announcements. Inputs set aside are built in
//! `set_aside.rs`, the join layer's messages in `join_shard.rs`, cancel and resume in
//! `lifecycle.rs`.
//!
//! Every message is persistent, JSON (`content_type` `application/json`), carries a
//! deterministic `message_id` (the same for every duplicate of the same message, so consumers
//! can deduplicate) and the `run-id` header. A runtime adds the `timestamp` and sends it where
//! its [`Destination`] resolves to (see [`Names::address`]).

use std::time::Duration;

use serde::Serialize;

use crate::{
    event::{EventKind, RunFailedBody},
    name::{RunId, StepName, WorkflowName},
    protocol::{
        Element, Names, RoutingKey,
        header::{self, Headers},
    },
    workflow::Workflow,
};

/// Where a message goes, before it is resolved into an exchange and a routing key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Destination {
    /// The events exchange under this routing key: triggers, lifecycle events, run ends.
    Events(RoutingKey),
    /// One step's own queue after `delay` (zero: at once): retries, joined inputs, counted
    /// redeliveries, replays.
    Step {
        /// The step's workflow.
        workflow: WorkflowName,
        /// The step.
        step: StepName,
        /// How long the message waits first (rounded up to the delay tick).
        delay: Duration,
    },
    /// A join (a join step's name, or the run join), routed by the run's slot to the shard
    /// that owns it.
    Join {
        /// The join's workflow.
        workflow: WorkflowName,
        /// The join step, or [`RUN_JOIN`](crate::protocol::RUN_JOIN).
        join: String,
        /// The run's slot ([`Names::join_slot`]).
        slot: u32,
    },
    /// The journal queue of one shard of a join.
    JoinJournal {
        /// The join's workflow.
        workflow: WorkflowName,
        /// The join step, or [`RUN_JOIN`](crate::protocol::RUN_JOIN).
        join: String,
        /// The shard.
        shard: u32,
    },
    /// A workflow's parked queue.
    Parked(WorkflowName),
    /// The queues that take `workflow`'s triggers, after `delay` (through the delay tiers).
    DelayedTrigger {
        /// The workflow.
        workflow: WorkflowName,
        /// How long the trigger waits first (rounded up to the delay tick).
        delay: Duration,
    },
    /// A workflow's redelivered queue (see
    /// [`Names::redelivered_queue`](crate::protocol::Names::redelivered_queue)).
    Redelivered(WorkflowName),
    /// The registry of workflow definitions.
    Registry,
    /// A workflow's scheduler queue, whose single active consumer fires its schedules.
    Scheduler(WorkflowName),
    /// A queue named by a request's `reply-to` header, through the default exchange.
    Reply(String),
}

/// An exchange and a routing key: where a runtime publishes a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// The exchange (empty: the default exchange, which routes to the queue named by the key).
    pub exchange: String,
    /// The routing key.
    pub routing_key: String,
}

impl Names {
    /// The exchange and routing key of `destination`.
    pub fn address(&self, destination: &Destination) -> Address {
        match destination {
            Destination::Events(key) => Address {
                exchange: self.exchange().to_owned(),
                routing_key: key.as_str().to_owned(),
            },
            Destination::Step {
                workflow,
                step,
                delay,
            } => {
                let route = self.delay_route(*delay, workflow, step);
                Address {
                    exchange: route.exchange,
                    routing_key: route.routing_key,
                }
            }
            Destination::Join {
                workflow,
                join,
                slot,
            } => Address {
                exchange: self.join_exchange(),
                routing_key: Names::join_key(workflow, join, *slot),
            },
            Destination::Parked(workflow) => Address {
                exchange: String::new(),
                routing_key: self.parked_queue(workflow).as_str().to_owned(),
            },
            Destination::DelayedTrigger { workflow, delay } => {
                let route = self.delayed_trigger_route(*delay, workflow);
                Address {
                    exchange: route.exchange,
                    routing_key: route.routing_key,
                }
            }
            Destination::Redelivered(workflow) => Address {
                exchange: String::new(),
                routing_key: self.redelivered_queue(workflow).as_str().to_owned(),
            },
            Destination::JoinJournal {
                workflow,
                join,
                shard,
            } => Address {
                exchange: String::new(),
                routing_key: self
                    .join_journal_queue(workflow, join, *shard)
                    .as_str()
                    .to_owned(),
            },
            Destination::Registry => Address {
                exchange: String::new(),
                routing_key: self.registry_queue().as_str().to_owned(),
            },
            Destination::Scheduler(workflow) => Address {
                exchange: String::new(),
                routing_key: self.scheduler_queue(workflow).as_str().to_owned(),
            },
            Destination::Reply(queue) => Address {
                exchange: String::new(),
                routing_key: queue.clone(),
            },
        }
    }
}

/// A message ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Where it goes.
    pub destination: Destination,
    /// The JSON body.
    pub body: Vec<u8>,
    /// Its headers.
    pub headers: Headers,
    /// Whether it starts from the headers of the delivery it answers (parked and counted
    /// messages keep everything they arrived with, but the broker's `x-delivery-count`,
    /// which a new copy must not carry); [`Outgoing::headers`] are set over them.
    pub inherit_headers: bool,
    /// The `message_id` property.
    pub message_id: String,
    /// Whether the broker must route it to at least one queue (returned otherwise).
    pub mandatory: bool,
}

impl Outgoing {
    /// Sets the message's `traceparent` header.
    #[must_use]
    pub fn with_trace(mut self, traceparent: &str) -> Self {
        self.headers.insert(header::TRACEPARENT, traceparent);
        self
    }

    /// Sets a journal record's time (`journal-time`, milliseconds since the Unix epoch).
    #[must_use]
    pub fn with_time(mut self, time_ms: u64) -> Self {
        self.headers.insert(
            header::JOURNAL_TIME,
            i64::try_from(time_ms).unwrap_or(i64::MAX),
        );
        self
    }

    /// The exchange and routing key the message goes to: its [`Destination`]'s, except that a
    /// step input of a prioritized run (`run-priority: high` or `low`) goes to its class's
    /// lane of the step (see [`Names::lane_route`]).
    pub fn address(&self, names: &Names) -> Address {
        match &self.destination {
            Destination::Step {
                workflow,
                step,
                delay,
            } => {
                // Only a step input reads the header: events, pieces and the rest go where
                // their destination says.
                let priority = self
                    .headers
                    .text(header::RUN_PRIORITY)
                    .and_then(|text| text.parse::<crate::Priority>().ok())
                    .unwrap_or_default();
                let route = names.lane_route(*delay, workflow, step, priority);
                Address {
                    exchange: route.exchange,
                    routing_key: route.routing_key,
                }
            }
            other => names.address(other),
        }
    }

    /// Sets `run-priority` to `priority`, unless it is `normal` (the header's absence).
    #[must_use]
    pub fn with_priority(mut self, priority: crate::Priority) -> Self {
        if priority.lane().is_some() {
            self.headers.insert(header::RUN_PRIORITY, priority.as_str());
        }
        self
    }

    /// The routing key, for messages on the events exchange.
    pub fn event_key(&self) -> Option<&RoutingKey> {
        match &self.destination {
            Destination::Events(key) => Some(key),
            _ => None,
        }
    }
}

pub(super) fn run_headers(run_id: &RunId, generation: u32) -> Headers {
    Headers::new()
        .with(header::RUN_ID, run_id.as_str())
        .with(header::RUN_GENERATION, generation)
}

/// What a generation adds to a `message_id`: nothing for the first, `:g<n>` after a resume,
/// so that the messages of a resumed run never share an id with the earlier ones.
pub(super) fn generation_suffix(generation: u32) -> String {
    if generation > 1 {
        format!(":g{generation}")
    } else {
        String::new()
    }
}

/// `<workflow>.run.triggered` with the run input as body.
pub fn trigger(workflow: &WorkflowName, run_id: &RunId, input: Vec<u8>) -> Outgoing {
    Outgoing {
        destination: Destination::Events(RoutingKey::run_triggered(workflow)),
        body: input,
        headers: run_headers(run_id, 1),
        inherit_headers: false,
        message_id: format!("{run_id}:{workflow}:triggered"),
        mandatory: true,
    }
}

/// A trigger of run `run_id` that starts it after `delay` (at most [`MAX_DELAY`], about 38.8
/// days; longer is shortened to it), held by the broker in the delay tiers, not by a process.
/// Like any trigger, a run cancelled meanwhile does not start: its run join answers the
/// trigger with `run.duplicate`.
///
/// [`MAX_DELAY`]: crate::protocol::MAX_DELAY
pub fn delayed_trigger(
    workflow: &WorkflowName,
    run_id: &RunId,
    input: Vec<u8>,
    delay: Duration,
) -> Outgoing {
    Outgoing {
        destination: Destination::DelayedTrigger {
            workflow: workflow.clone(),
            delay,
        },
        ..trigger(workflow, run_id, input)
    }
}

/// What identifies one attempt of one step, for building its messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptId {
    /// The workflow.
    pub workflow: WorkflowName,
    /// The step.
    pub step: StepName,
    /// The run.
    pub run_id: RunId,
    /// The attempt, from 1.
    pub attempt: u32,
    /// The run's generation, from 1.
    pub generation: u32,
    /// For an attempt of a map step: the element it runs on.
    pub element: Option<Element>,
    /// The run's priority class (always `normal` for a workflow without priorities).
    pub priority: crate::Priority,
    /// The attempt's `traceparent`: the run's trace, a span of its own.
    pub trace: String,
}

impl AttemptId {
    /// The headers every message of this attempt carries: the run's, and the element's.
    fn headers(&self) -> Headers {
        let mut headers = run_headers(&self.run_id, self.generation);
        if let Some(element) = self.element {
            element.mark(&mut headers);
        }
        if self.priority.lane().is_some() {
            headers.insert(header::RUN_PRIORITY, self.priority.as_str());
        }
        headers
    }

    /// The step as it shows in `message_id`s: its name, and `[<index>]` for a map element.
    pub fn step_label(&self) -> String {
        format!("{}{}", self.step, Element::suffix(self.element))
    }

    /// A lifecycle event of this attempt with `body` (JSON bytes).
    pub fn event(&self, kind: EventKind, body: Vec<u8>, mandatory: bool) -> Outgoing {
        Outgoing {
            destination: Destination::Events(RoutingKey::step_event(
                &self.workflow,
                &self.step,
                kind,
            )),
            body,
            headers: self.headers().with(header::ATTEMPT, self.attempt),
            inherit_headers: false,
            message_id: format!(
                "{}:{}:{}:{kind}:{}",
                self.run_id,
                self.workflow,
                self.step_label(),
                self.attempt
            ),
            mandatory,
        }
        .with_trace(&self.trace)
    }

    /// A JSON-bodied lifecycle event that no queue is required to receive.
    pub fn notice(&self, kind: EventKind, body: &impl Serialize) -> Outgoing {
        self.event(kind, json(body), false)
    }

    /// The step's input again, bound for the step's own queue after `delay`, as the next
    /// attempt.
    pub fn retry(&self, delay: Duration, input: Vec<u8>) -> Outgoing {
        let next = self.attempt.saturating_add(1);
        Outgoing {
            destination: Destination::Step {
                workflow: self.workflow.clone(),
                step: self.step.clone(),
                delay,
            },
            body: input,
            headers: self.headers().with(header::RETRY_ATTEMPT, next),
            inherit_headers: false,
            message_id: format!(
                "{}:{}:{}:retry:{next}",
                self.run_id,
                self.workflow,
                self.step_label()
            ),
            mandatory: true,
        }
        .with_trace(&self.trace)
    }
}

/// A run's terminal event: `<workflow>.run.succeeded`, `run.failed` or `run.cancelled` of
/// generation `generation`. Its `message_id` is the same for every duplicate.
pub fn run_event(
    workflow: &WorkflowName,
    run_id: &RunId,
    generation: u32,
    kind: EventKind,
    body: Vec<u8>,
) -> Outgoing {
    Outgoing {
        destination: Destination::Events(RoutingKey::run_event(workflow, kind)),
        body,
        headers: run_headers(run_id, generation),
        inherit_headers: false,
        message_id: format!(
            "{run_id}:{workflow}:run:{kind}{}",
            generation_suffix(generation)
        ),
        mandatory: false,
    }
}

/// `<workflow>.run.failed` with `failure` as its body.
pub fn run_failed(
    workflow: &WorkflowName,
    run_id: &RunId,
    generation: u32,
    failure: &RunFailedBody,
) -> Outgoing {
    run_event(
        workflow,
        run_id,
        generation,
        EventKind::RunFailed,
        json(failure),
    )
}

/// A runner's probe of `workflow`'s scheduler queue: empty; the runner that receives the
/// probes leads the schedules.
pub fn scheduler_probe(workflow: &WorkflowName) -> Outgoing {
    Outgoing {
        destination: Destination::Scheduler(workflow.clone()),
        body: Vec::new(),
        headers: Headers::new(),
        inherit_headers: false,
        message_id: format!("probe:{workflow}"),
        mandatory: false,
    }
}

/// A runner's announcement of its workflow's definition, with the schedules it was given.
pub fn announcement_of(definition: &crate::workflow::WorkflowDefinition) -> Outgoing {
    Outgoing {
        destination: Destination::Registry,
        body: json(definition),
        headers: Headers::new().with(header::WORKFLOW, definition.name.as_str()),
        inherit_headers: false,
        message_id: format!("announce:{}", definition.name),
        mandatory: true,
    }
}

/// A runner's announcement of its workflow's definition, for tools.
pub fn announcement(workflow: &Workflow) -> Outgoing {
    Outgoing {
        destination: Destination::Registry,
        body: json(&workflow.definition()),
        headers: Headers::new().with(header::WORKFLOW, workflow.name().as_str()),
        inherit_headers: false,
        message_id: format!("announce:{}", workflow.name()),
        mandatory: true,
    }
}

/// The longest `message_id` AMQP carries (a short string).
pub const MAX_MESSAGE_ID_LEN: usize = 255;

/// `id` if it fits in [`MAX_MESSAGE_ID_LEN`] bytes; otherwise its first bytes and a hash of the
/// whole, so that the id stays deterministic (a duplicate gets the same one) and distinct.
pub fn fit_message_id(id: String) -> String {
    if id.len() <= MAX_MESSAGE_ID_LEN {
        return id;
    }
    // FNV-1a, 64 bits: stable across versions and platforms.
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let suffix = format!("~{hash:016x}");
    let mut keep = MAX_MESSAGE_ID_LEN - suffix.len();
    while !id.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}{suffix}", &id[..keep])
}

/// The JSON bytes of `body`.
pub fn json(body: &impl Serialize) -> Vec<u8> {
    // Bodies are plain structs of strings and numbers; encoding cannot fail.
    serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_past_the_short_string_limit_keep_a_prefix_and_a_hash() {
        let at_limit = "r".repeat(MAX_MESSAGE_ID_LEN);
        assert_eq!(fit_message_id(at_limit.clone()), at_limit);
        let long = format!("parked:{}:simple:triggered", "é".repeat(150));
        let fitted = fit_message_id(long.clone());
        assert!(fitted.len() <= MAX_MESSAGE_ID_LEN, "{}", fitted.len());
        assert_eq!(fitted, fit_message_id(long.clone()), "deterministic");
        assert_ne!(fitted, fit_message_id(format!("{long}x")), "distinct");
        assert!(fitted.starts_with("parked:é"));
    }
}
