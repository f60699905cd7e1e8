//! Every message Inqubo publishes, built in one place.
//!
//! Every message is persistent, JSON (`content_type` `application/json`), carries a
//! deterministic `message_id` (the same for every duplicate of the same message, so consumers
//! can deduplicate) and the `run-id` header. A runtime adds the `timestamp` and sends it where
//! its [`Destination`] resolves to (see [`Names::address`]).

use std::time::Duration;

use serde::Serialize;

use crate::{
    event::{EventKind, FailedBody, RunFailedBody},
    name::{RunId, StepName, WorkflowName},
    protocol::{
        Names, RoutingKey,
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
    /// One shard of a join (a join step's name, or the run join).
    Join {
        /// The join's workflow.
        workflow: WorkflowName,
        /// The join step, or [`RUN_JOIN`](crate::protocol::RUN_JOIN).
        join: String,
        /// The shard owning the run.
        shard: u32,
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
                shard,
            } => Address {
                exchange: self.join_exchange(),
                routing_key: Names::join_key(workflow, join, *shard),
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
    /// The attempt's `traceparent`: the run's trace, a span of its own.
    pub trace: String,
}

impl AttemptId {
    /// A lifecycle event of this attempt with `body` (JSON bytes).
    pub fn event(&self, kind: EventKind, body: Vec<u8>, mandatory: bool) -> Outgoing {
        Outgoing {
            destination: Destination::Events(RoutingKey::step_event(
                &self.workflow,
                &self.step,
                kind,
            )),
            body,
            headers: run_headers(&self.run_id, self.generation).with(header::ATTEMPT, self.attempt),
            inherit_headers: false,
            message_id: format!(
                "{}:{}:{}:{kind}:{}",
                self.run_id, self.workflow, self.step, self.attempt
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
            headers: run_headers(&self.run_id, self.generation).with(header::RETRY_ATTEMPT, next),
            inherit_headers: false,
            message_id: format!(
                "{}:{}:{}:retry:{next}",
                self.run_id, self.workflow, self.step
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

/// An input that failed for good, bound for the workflow's parked queue. It keeps the
/// delivery's body and headers and adds the `parked-*` headers.
pub fn parked(
    workflow: &WorkflowName,
    step: &str,
    received: &super::Incoming<'_>,
    failure: &FailedBody,
) -> Outgoing {
    let headers = Headers::new()
        .with(header::PARKED_REASON, failure.reason.as_str())
        .with(header::PARKED_ERROR, cut_error(&failure.error))
        .with(header::PARKED_STEP, step)
        .with(header::PARKED_ROUTING_KEY, received.routing_key)
        .with(header::PARKED_ATTEMPT, failure.attempt);
    Outgoing {
        destination: Destination::Parked(workflow.clone()),
        body: received.body.to_vec(),
        headers,
        inherit_headers: true,
        message_id: received.message_id.map_or_else(
            || format!("{PARKED_ID}{workflow}:{step}"),
            |id| format!("{PARKED_ID}{id}"),
        ),
        mandatory: true,
    }
}

/// A redelivered input of `step` moved to its workflow's redelivered queue, where runners
/// take one at a time; `started` is how many of its deliveries are known to have started
/// without being acknowledged (what `max_redeliveries` is compared with).
pub fn redelivered(
    workflow: &WorkflowName,
    step: &StepName,
    received: &super::Incoming<'_>,
    started: u32,
) -> Outgoing {
    Outgoing {
        destination: Destination::Redelivered(workflow.clone()),
        body: received.body.to_vec(),
        headers: Headers::new()
            .with(header::REDELIVERY_COUNT, started)
            .with(header::REDELIVERED_STEP, step.as_str()),
        inherit_headers: true,
        message_id: received
            .message_id
            .map_or_else(|| format!("redelivery:{workflow}:{step}"), str::to_owned),
        mandatory: true,
    }
}

/// A redelivered input sent round its own step's queue again with its redelivery count, for a
/// classic queue, which does not count redeliveries (a step limited across the fleet, whose
/// redeliveries are counted where they are).
pub fn recounted(
    workflow: &WorkflowName,
    step: &StepName,
    received: &super::Incoming<'_>,
    count: u32,
) -> Outgoing {
    Outgoing {
        destination: Destination::Step {
            workflow: workflow.clone(),
            step: step.clone(),
            delay: Duration::ZERO,
        },
        body: received.body.to_vec(),
        headers: Headers::new().with(header::REDELIVERY_COUNT, count),
        inherit_headers: true,
        message_id: received
            .message_id
            .map_or_else(|| format!("redelivery:{workflow}:{step}"), str::to_owned),
        mandatory: true,
    }
}

/// An input a runner received but never started, put back at the end of its step's queue
/// as it was (a runner shutting down): a new copy, whose deliveries the broker counts from
/// zero, so that the input is not taken for one that crashed its runner.
pub fn unstarted(
    workflow: &WorkflowName,
    step: &StepName,
    received: &super::Incoming<'_>,
) -> Outgoing {
    Outgoing {
        destination: Destination::Step {
            workflow: workflow.clone(),
            step: step.clone(),
            delay: Duration::ZERO,
        },
        body: received.body.to_vec(),
        headers: Headers::new(),
        inherit_headers: true,
        message_id: received
            .message_id
            .map_or_else(|| format!("unstarted:{workflow}:{step}"), str::to_owned),
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

/// `error` if it fits in [`MAX_ERROR_HEADER_LEN`] bytes; otherwise its first bytes and a
/// marker saying how much was cut. Headers travel in one frame whose size the broker limits
/// (128 KiB by default), so an error text of any length must not go into one whole.
pub fn cut_error(error: &str) -> String {
    if error.len() <= MAX_ERROR_HEADER_LEN {
        return error.to_owned();
    }
    let marker = format!(" [cut: {} bytes in all]", error.len());
    let mut keep = MAX_ERROR_HEADER_LEN - marker.len();
    while !error.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}{marker}", &error[..keep])
}

/// The longest `parked-error` header, in bytes; the `failed` event's body has the whole text.
pub const MAX_ERROR_HEADER_LEN: usize = 4096;

/// What [`parked`] puts before the `message_id` of the input it parks.
pub(super) const PARKED_ID: &str = "parked:";

/// The JSON bytes of `body`.
pub fn json(body: &impl Serialize) -> Vec<u8> {
    // Bodies are plain structs of strings and numbers; encoding cannot fail.
    serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec())
}

#[cfg(test)]
mod tests {
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

    use super::*;

    #[test]
    fn a_long_error_is_cut_in_the_parked_header_at_a_character_boundary() {
        let error = format!("{}{}", "é".repeat(3000), "x".repeat(100_000));
        let cut = cut_error(&error);
        assert!(cut.len() <= MAX_ERROR_HEADER_LEN, "{}", cut.len());
        assert!(cut.ends_with(&format!(" [cut: {} bytes in all]", error.len())));
        assert!(cut.starts_with("ééé"));
        assert_eq!(cut_error("short"), "short");
        let exact = "y".repeat(MAX_ERROR_HEADER_LEN);
        assert_eq!(cut_error(&exact), exact);
    }
    use crate::{FailureReason, protocol::Incoming};

    #[test]
    fn parked_messages_keep_the_input_and_add_the_reason() {
        let wf = WorkflowName::new("simple").unwrap();
        let step = StepName::new("s").unwrap();
        let input = Incoming {
            routing_key: "simple.run.triggered",
            redelivered: false,
            headers: Headers::new().with(header::RUN_ID, "r"),
            message_id: Some("m1"),
            body: b"[1]",
        };
        let failure = FailedBody {
            error: "bad".into(),
            attempt: 4,
            reason: FailureReason::RetriesExhausted,
        };
        let message = parked(&wf, step.as_str(), &input, &failure);
        let address = Names::default().address(&message.destination);
        assert_eq!(address.exchange, "");
        assert_eq!(address.routing_key, "inqubo.simple.parked");
        assert_eq!(message.body, b"[1]");
        assert!(message.inherit_headers);
        let get = |k: &str| message.headers.get(k).cloned();
        assert_eq!(get("parked-reason"), Some("retries_exhausted".into()));
        assert_eq!(
            get("parked-routing-key"),
            Some("simple.run.triggered".into())
        );
        assert_eq!(get("parked-attempt"), Some(4_u32.into()));
        assert_eq!(message.message_id, "parked:m1");
        assert!(message.mandatory);
    }
}
