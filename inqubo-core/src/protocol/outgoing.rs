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
    /// The state queue of one shard of a join, which keeps its latest snapshots.
    JoinState {
        /// The join's workflow.
        workflow: WorkflowName,
        /// The join step, or [`RUN_JOIN`](crate::protocol::RUN_JOIN).
        join: String,
        /// The shard.
        shard: u32,
    },
    /// A workflow's parked queue.
    Parked(WorkflowName),
    /// The registry of workflow definitions.
    Registry,
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
            Destination::JoinState {
                workflow,
                join,
                shard,
            } => Address {
                exchange: String::new(),
                routing_key: self
                    .join_state_queue(workflow, join, *shard)
                    .as_str()
                    .to_owned(),
            },
            Destination::Registry => Address {
                exchange: String::new(),
                routing_key: self.registry_queue().as_str().to_owned(),
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
    /// messages keep everything they arrived with); [`Outgoing::headers`] are set over them.
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

    /// The routing key, for messages on the events exchange.
    pub fn event_key(&self) -> Option<&RoutingKey> {
        match &self.destination {
            Destination::Events(key) => Some(key),
            _ => None,
        }
    }
}

fn run_headers(run_id: &RunId) -> Headers {
    Headers::new().with(header::RUN_ID, run_id.as_str())
}

/// `<workflow>.run.triggered` with the run input as body.
pub fn trigger(workflow: &WorkflowName, run_id: &RunId, input: Vec<u8>) -> Outgoing {
    Outgoing {
        destination: Destination::Events(RoutingKey::run_triggered(workflow)),
        body: input,
        headers: run_headers(run_id),
        inherit_headers: false,
        message_id: format!("{run_id}:{workflow}:triggered"),
        mandatory: true,
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
            headers: run_headers(&self.run_id).with(header::ATTEMPT, self.attempt),
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
            headers: run_headers(&self.run_id).with(header::RETRY_ATTEMPT, next),
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

/// A parent's output (or a run's failure) bound for the shard of `join` that owns `run_id`.
pub fn join_piece(
    workflow: &WorkflowName,
    join: &str,
    run_id: &RunId,
    from: &StepName,
    body: Vec<u8>,
    failed: bool,
) -> Outgoing {
    let mut headers = run_headers(run_id).with(header::JOIN_PARENT, from.as_str());
    if failed {
        headers.insert(header::JOIN_FAILED, true);
    }
    let kind = if failed { "failed" } else { "piece" };
    Outgoing {
        destination: Destination::Join {
            workflow: workflow.clone(),
            join: join.to_owned(),
            shard: Names::join_shard(run_id.as_str()),
        },
        body,
        headers,
        inherit_headers: false,
        message_id: format!("{run_id}:{workflow}:{from}:{kind}:{join}"),
        mandatory: true,
    }
}

/// A join step's assembled input, bound for its queue.
pub fn joined_input(
    workflow: &WorkflowName,
    step: &StepName,
    run_id: &RunId,
    input: Vec<u8>,
) -> Outgoing {
    Outgoing {
        destination: Destination::Step {
            workflow: workflow.clone(),
            step: step.clone(),
            delay: Duration::ZERO,
        },
        body: input,
        headers: run_headers(run_id),
        inherit_headers: false,
        message_id: format!("{run_id}:{workflow}:{step}:joined"),
        mandatory: true,
    }
}

/// `<workflow>.run.succeeded` or `<workflow>.run.failed`.
pub fn run_event(
    workflow: &WorkflowName,
    run_id: &RunId,
    kind: EventKind,
    body: Vec<u8>,
) -> Outgoing {
    Outgoing {
        destination: Destination::Events(RoutingKey::run_event(workflow, kind)),
        body,
        headers: run_headers(run_id),
        inherit_headers: false,
        message_id: format!("{run_id}:{workflow}:run:{kind}"),
        mandatory: false,
    }
}

/// `<workflow>.run.failed` with `failure` as its body.
pub fn run_failed(workflow: &WorkflowName, run_id: &RunId, failure: &RunFailedBody) -> Outgoing {
    run_event(workflow, run_id, EventKind::RunFailed, json(failure))
}

/// The latest state of a join shard, kept in its state queue.
pub fn join_snapshot(
    workflow: &WorkflowName,
    join: &str,
    shard: u32,
    snapshot: Vec<u8>,
) -> Outgoing {
    Outgoing {
        destination: Destination::JoinState {
            workflow: workflow.clone(),
            join: join.to_owned(),
            shard,
        },
        body: snapshot,
        headers: Headers::new(),
        inherit_headers: false,
        message_id: format!("snapshot:{workflow}.{join}.{shard}"),
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
        .with(header::PARKED_ERROR, failure.error.as_str())
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

/// A redelivered input sent back to its step's queue with its redelivery count, for classic
/// queues, which do not count redeliveries themselves.
pub fn counted_redelivery(
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

/// What [`parked`] puts before the `message_id` of the input it parks.
const PARKED_ID: &str = "parked:";

/// A parked input sent back to the step it failed in (`inqubo parked replay`), as a fresh
/// first attempt: its `run-id` and `traceparent` are kept, the `parked-*` headers dropped.
///
/// `original_message_id` is the parked message's `message_id`. The replay's is `replay:`
/// followed by the id of the input that was parked (without the `parked:` that [`parked`]
/// added), so replaying the same parked message twice sends the same id, and an input parked
/// and replayed again and again grows its id by one `replay:` a round, not two prefixes.
pub fn replay(
    workflow: &WorkflowName,
    step: &StepName,
    run_id: Option<&str>,
    traceparent: Option<&str>,
    original_message_id: Option<&str>,
    body: Vec<u8>,
) -> Outgoing {
    let mut headers = Headers::new();
    if let Some(run_id) = run_id {
        headers.insert(header::RUN_ID, run_id);
    }
    if let Some(trace) = traceparent {
        headers.insert(header::TRACEPARENT, trace);
    }
    let run = run_id.unwrap_or("unknown");
    Outgoing {
        destination: Destination::Step {
            workflow: workflow.clone(),
            step: step.clone(),
            delay: Duration::ZERO,
        },
        body,
        headers,
        inherit_headers: false,
        message_id: original_message_id.map_or_else(
            || format!("{run}:{workflow}:{step}:replay"),
            |id| format!("replay:{}", id.strip_prefix(PARKED_ID).unwrap_or(id)),
        ),
        mandatory: true,
    }
}

/// The JSON bytes of `body`.
pub fn json(body: &impl Serialize) -> Vec<u8> {
    // Bodies are plain structs of strings and numbers; encoding cannot fail.
    serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec())
}

/// The body of `run.succeeded` for a chain: `{"<last step>": output}`.
pub fn single_leaf_outputs(step: &StepName, output: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(output.len() + step.as_str().len() + 5);
    body.extend_from_slice(b"{\"");
    body.extend_from_slice(step.as_str().as_bytes());
    body.extend_from_slice(b"\":");
    body.extend_from_slice(output);
    body.push(b'}');
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FailureReason, protocol::Incoming};

    #[test]
    fn chain_run_outputs_are_keyed_by_the_last_step() {
        let step = StepName::new("load").unwrap();
        let body = single_leaf_outputs(&step, br#"{"a":[1]}"#);
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value, serde_json::json!({"load": {"a": [1]}}));
    }

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

    #[test]
    fn replays_go_to_the_step_queue_with_run_id_trace_and_an_id() {
        let wf = WorkflowName::new("simple").unwrap();
        let step = StepName::new("s").unwrap();
        let message = replay(
            &wf,
            &step,
            Some("r1"),
            Some("00-ab-cd-01"),
            Some("m7"),
            b"1".to_vec(),
        );
        let address = Names::default().address(&message.destination);
        assert_eq!(address.exchange, "inqubo.retry");
        assert_eq!(address.routing_key, "simple.s");
        assert_eq!(message.headers.text(header::RUN_ID), Some("r1"));
        assert_eq!(
            message.headers.text(header::TRACEPARENT),
            Some("00-ab-cd-01")
        );
        assert_eq!(message.message_id, "replay:m7");
    }

    #[test]
    fn replaying_a_parked_message_drops_the_parked_prefix_of_its_id() {
        let wf = WorkflowName::new("simple").unwrap();
        let step = StepName::new("s").unwrap();
        let input = Incoming {
            routing_key: "simple.run.triggered",
            redelivered: false,
            headers: Headers::new().with(header::RUN_ID, "r1"),
            message_id: Some("r1:simple:triggered"),
            body: b"1",
        };
        let failure = FailedBody {
            error: "bad".into(),
            attempt: 1,
            reason: FailureReason::Fatal,
        };
        let parked = parked(&wf, step.as_str(), &input, &failure);
        assert_eq!(parked.message_id, "parked:r1:simple:triggered");
        let replayed = replay(
            &wf,
            &step,
            Some("r1"),
            None,
            Some(&parked.message_id),
            parked.body.clone(),
        );
        assert_eq!(replayed.message_id, "replay:r1:simple:triggered");
        assert_eq!(replayed.headers.text(header::TRACEPARENT), None);
        let without_id = replay(&wf, &step, None, None, None, b"1".to_vec());
        assert_eq!(without_id.message_id, "unknown:simple:s:replay");
        assert!(!without_id.headers.contains(header::RUN_ID));
    }
}
