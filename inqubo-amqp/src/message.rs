//! The AMQP messages of the protocol: how each one is built, and how headers are read back.
//!
//! Every message is persistent (`delivery_mode` 2), JSON (`content_type` `application/json`),
//! carries a `message_id` and a `timestamp`, and the `run-id` header. See `docs/protocol.md`.

use std::time::{SystemTime, UNIX_EPOCH};

use inqubo_core::{
    EventKind, FailedBody, FailureReason, RoutingKey, RunId, StepName, WorkflowName,
    protocol::{CONTENT_TYPE, header},
};
use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use serde::Serialize;

use crate::topology::{DelayRoute, Topology};

/// A message ready to publish.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) exchange: String,
    pub(crate) routing_key: String,
    pub(crate) body: Vec<u8>,
    pub(crate) headers: FieldTable,
    pub(crate) message_id: String,
    /// Whether the broker must route it to at least one queue (returned otherwise).
    pub(crate) mandatory: bool,
}

impl Outgoing {
    /// Sets the message's `traceparent` header.
    pub(crate) fn with_trace(mut self, traceparent: &str) -> Self {
        self.headers
            .insert(header::TRACEPARENT.into(), text(traceparent));
        self
    }

    pub(crate) fn properties(&self) -> BasicProperties {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from(CONTENT_TYPE))
            .with_message_id(ShortString::from(self.message_id.as_str()))
            .with_timestamp(now)
            .with_headers(self.headers.clone())
    }
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

fn number(value: u32) -> AMQPValue {
    AMQPValue::LongLongInt(i64::from(value))
}

fn run_headers(run_id: &RunId) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(header::RUN_ID.into(), text(run_id.as_str()));
    headers
}

/// `<workflow>.run.triggered` with the run input as body.
pub(crate) fn trigger(
    topology: &Topology,
    workflow: &WorkflowName,
    run_id: &RunId,
    input: Vec<u8>,
) -> Outgoing {
    Outgoing {
        exchange: topology.exchange().to_owned(),
        routing_key: RoutingKey::run_triggered(workflow).as_str().to_owned(),
        body: input,
        headers: run_headers(run_id),
        message_id: format!("{run_id}:{workflow}:triggered"),
        mandatory: true,
    }
}

/// What identifies one attempt of one step, for building its events.
#[derive(Debug, Clone)]
pub(crate) struct AttemptId<'a> {
    pub(crate) topology: &'a Topology,
    pub(crate) workflow: &'a WorkflowName,
    pub(crate) step: &'a StepName,
    pub(crate) run_id: &'a RunId,
    pub(crate) attempt: u32,
    /// The attempt's `traceparent`: the run's trace, a span of its own.
    pub(crate) trace: &'a str,
}

impl AttemptId<'_> {
    /// A lifecycle event of this attempt.
    pub(crate) fn event(&self, kind: EventKind, body: Vec<u8>, mandatory: bool) -> Outgoing {
        let mut headers = run_headers(self.run_id);
        headers.insert(header::ATTEMPT.into(), number(self.attempt));
        Outgoing {
            exchange: self.topology.exchange().to_owned(),
            routing_key: RoutingKey::step_event(self.workflow, self.step, kind)
                .as_str()
                .to_owned(),
            body,
            headers,
            message_id: format!(
                "{}:{}:{}:{kind}:{}",
                self.run_id, self.workflow, self.step, self.attempt
            ),
            mandatory,
        }
        .with_trace(self.trace)
    }

    /// A JSON-bodied lifecycle event that no queue is required to receive.
    pub(crate) fn notice(&self, kind: EventKind, body: &impl Serialize) -> Outgoing {
        self.event(kind, json(body), false)
    }

    /// The step's input again, bound for the step's own queue after a delay.
    pub(crate) fn retry(&self, route: &DelayRoute, input: Vec<u8>) -> Outgoing {
        let next = self.attempt.saturating_add(1);
        let mut headers = run_headers(self.run_id);
        headers.insert(header::RETRY_ATTEMPT.into(), number(next));
        Outgoing {
            exchange: route.exchange.clone(),
            routing_key: route.routing_key.clone(),
            body: input,
            headers,
            message_id: format!(
                "{}:{}:{}:retry:{next}",
                self.run_id, self.workflow, self.step
            ),
            mandatory: true,
        }
        .with_trace(self.trace)
    }
}

/// A parent's output (or a run's failure) bound for the shard of `join` that owns `run_id`.
pub(crate) fn join_piece(
    topology: &Topology,
    workflow: &WorkflowName,
    join: &str,
    run_id: &RunId,
    from: &StepName,
    body: Vec<u8>,
    failed: bool,
) -> Outgoing {
    let mut headers = run_headers(run_id);
    headers.insert(header::JOIN_PARENT.into(), text(from.as_str()));
    if failed {
        headers.insert(header::JOIN_FAILED.into(), AMQPValue::Boolean(true));
    }
    let shard = Topology::join_shard(run_id.as_str());
    let kind = if failed { "failed" } else { "piece" };
    Outgoing {
        exchange: topology.join_exchange(),
        routing_key: Topology::join_key(workflow, join, shard),
        body,
        headers,
        message_id: format!("{run_id}:{workflow}:{from}:{kind}:{join}"),
        mandatory: true,
    }
}

/// A join step's assembled input, bound for its queue.
pub(crate) fn joined_input(
    topology: &Topology,
    workflow: &WorkflowName,
    step: &StepName,
    run_id: &RunId,
    input: Vec<u8>,
) -> Outgoing {
    let route = topology.delay_route(std::time::Duration::ZERO, workflow, step);
    Outgoing {
        exchange: route.exchange,
        routing_key: route.routing_key,
        body: input,
        headers: run_headers(run_id),
        message_id: format!("{run_id}:{workflow}:{step}:joined"),
        mandatory: true,
    }
}

/// `<workflow>.run.succeeded` or `<workflow>.run.failed`.
pub(crate) fn run_event(
    topology: &Topology,
    workflow: &WorkflowName,
    run_id: &RunId,
    kind: EventKind,
    body: Vec<u8>,
) -> Outgoing {
    Outgoing {
        exchange: topology.exchange().to_owned(),
        routing_key: RoutingKey::run_event(workflow, kind).as_str().to_owned(),
        body,
        headers: run_headers(run_id),
        message_id: format!("{run_id}:{workflow}:run:{kind}"),
        mandatory: false,
    }
}

/// The latest state of a join shard, replacing the previous one in its state queue.
pub(crate) fn join_snapshot(queue: &str, snapshot: Vec<u8>) -> Outgoing {
    Outgoing {
        exchange: String::new(),
        routing_key: queue.to_owned(),
        body: snapshot,
        headers: FieldTable::default(),
        message_id: format!("snapshot:{queue}"),
        mandatory: true,
    }
}

/// The body of `run.succeeded` for a chain: `{"<last step>": output}`.
pub(crate) fn single_leaf_outputs(step: &StepName, output: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(output.len() + step.as_str().len() + 5);
    body.extend_from_slice(b"{\"");
    body.extend_from_slice(step.as_str().as_bytes());
    body.extend_from_slice(b"\":");
    body.extend_from_slice(output);
    body.push(b'}');
    body
}

/// A runner's announcement of its workflow's definition, for tools.
pub(crate) fn announcement(topology: &Topology, workflow: &inqubo_core::Workflow) -> Outgoing {
    let mut headers = FieldTable::default();
    headers.insert(header::WORKFLOW.into(), text(workflow.name().as_str()));
    Outgoing {
        exchange: String::new(),
        routing_key: topology.registry_queue().as_str().to_owned(),
        body: json(&workflow.definition()),
        headers,
        message_id: format!("announce:{}", workflow.name()),
        mandatory: true,
    }
}

/// An input that failed for good, bound for the workflow's parked queue.
///
/// It keeps the original body and headers and adds the `parked-*` headers.
pub(crate) fn parked(
    topology: &Topology,
    workflow: &WorkflowName,
    step: &StepName,
    received: &Received<'_>,
    failure: &FailedBody,
) -> Outgoing {
    let mut headers = received.headers.cloned().unwrap_or_default();
    headers.insert(header::PARKED_REASON.into(), text(failure.reason.as_str()));
    headers.insert(header::PARKED_ERROR.into(), text(&failure.error));
    headers.insert(header::PARKED_STEP.into(), text(step.as_str()));
    headers.insert(
        header::PARKED_ROUTING_KEY.into(),
        text(received.routing_key),
    );
    headers.insert(header::PARKED_ATTEMPT.into(), number(failure.attempt));
    let queue = topology.parked_queue(workflow);
    Outgoing {
        exchange: String::new(),
        routing_key: queue.as_str().to_owned(),
        body: received.body.to_vec(),
        headers,
        message_id: received.message_id.map_or_else(
            || format!("parked:{workflow}:{step}"),
            |id| format!("parked:{id}"),
        ),
        mandatory: true,
    }
}

/// The JSON bytes of `body`.
pub(crate) fn json(body: &impl Serialize) -> Vec<u8> {
    // Bodies are plain structs of strings and numbers; encoding cannot fail.
    serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec())
}

/// A redelivered input sent back to its step's queue with its redelivery count, for classic
/// queues, which do not count redeliveries themselves.
pub(crate) fn counted_redelivery(
    topology: &Topology,
    workflow: &WorkflowName,
    step: &StepName,
    received: &Received<'_>,
    count: u32,
) -> Outgoing {
    let mut headers = received.headers.cloned().unwrap_or_default();
    headers.insert(header::REDELIVERY_COUNT.into(), number(count));
    let route = topology.delay_route(std::time::Duration::ZERO, workflow, step);
    Outgoing {
        exchange: route.exchange,
        routing_key: route.routing_key,
        body: received.body.to_vec(),
        headers,
        message_id: received
            .message_id
            .map_or_else(|| format!("redelivery:{workflow}:{step}"), str::to_owned),
        mandatory: true,
    }
}

/// A delivery as read from a step queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Received<'a> {
    pub(crate) routing_key: &'a str,
    pub(crate) redelivered: bool,
    pub(crate) headers: Option<&'a FieldTable>,
    pub(crate) message_id: Option<&'a str>,
    pub(crate) body: &'a [u8],
}

impl<'a> Received<'a> {
    pub(crate) fn from_delivery(delivery: &'a lapin::message::Delivery) -> Self {
        Self {
            routing_key: delivery.routing_key.as_str(),
            redelivered: delivery.redelivered,
            headers: delivery.properties.headers().as_ref(),
            message_id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(ShortString::as_str),
            body: &delivery.data,
        }
    }

    fn header(&self, name: &str) -> Option<&'a AMQPValue> {
        self.headers?.inner().get(name)
    }

    /// The run id, or why there is none.
    pub(crate) fn run_id(&self) -> Result<RunId, String> {
        let value = self
            .header(header::RUN_ID)
            .ok_or_else(|| format!("missing `{}` header", header::RUN_ID))?;
        let text = string_value(value)
            .ok_or_else(|| format!("`{}` header is not a string", header::RUN_ID))?;
        RunId::new(text).map_err(|e| format!("invalid `{}` header: {e}", header::RUN_ID))
    }

    /// The `run-id` header if it is usable, for reporting a failure of a message that is
    /// otherwise broken.
    pub(crate) fn run_id_if_valid(&self) -> Option<RunId> {
        self.run_id().ok()
    }

    /// How many times this message was delivered before without being acknowledged: the
    /// broker's `x-delivery-count` on quorum queues, our own `redelivery-count` on classic
    /// ones (plus one if this delivery is itself a redelivery).
    pub(crate) fn previous_deliveries(&self) -> u32 {
        let read = |name| {
            self.header(name)
                .and_then(integer_value)
                .and_then(|n| u32::try_from(n).ok())
        };
        if let Some(count) = read(header::X_DELIVERY_COUNT) {
            return count;
        }
        let counted = read(header::REDELIVERY_COUNT).unwrap_or(0);
        counted.saturating_add(u32::from(self.redelivered))
    }

    /// Whether the broker counts redeliveries of this message itself (quorum queues).
    pub(crate) fn counted_by_broker(&self) -> bool {
        self.header(header::X_DELIVERY_COUNT).is_some()
    }

    /// The `traceparent` the delivery carries, if any.
    pub(crate) fn traceparent(&self) -> Option<String> {
        self.header(header::TRACEPARENT).and_then(string_value)
    }

    /// The attempt this delivery starts: `retry-attempt` on retries, 1 otherwise.
    pub(crate) fn attempt(&self) -> Result<u32, String> {
        match self.header(header::RETRY_ATTEMPT) {
            None => Ok(1),
            Some(value) => integer_value(value)
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    format!(
                        "`{}` header is not a positive integer",
                        header::RETRY_ATTEMPT
                    )
                }),
        }
    }
}

/// The text of a string header (long or short string, valid UTF-8).
pub(crate) fn string_value(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok().map(str::to_owned),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// The value of an integer header of any width.
pub(crate) fn integer_value(value: &AMQPValue) -> Option<i64> {
    match *value {
        AMQPValue::ShortShortInt(n) => Some(n.into()),
        AMQPValue::ShortShortUInt(n) => Some(n.into()),
        AMQPValue::ShortInt(n) => Some(n.into()),
        AMQPValue::ShortUInt(n) => Some(n.into()),
        AMQPValue::LongInt(n) => Some(n.into()),
        AMQPValue::LongUInt(n) => Some(n.into()),
        AMQPValue::LongLongInt(n) => Some(n),
        AMQPValue::Timestamp(n) => i64::try_from(n).ok(),
        _ => None,
    }
}

/// A final failure for a message that could not be read.
pub(crate) fn undecodable(error: String) -> FailedBody {
    FailedBody {
        error,
        attempt: 0,
        reason: FailureReason::Undecodable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(headers: Option<&FieldTable>) -> Received<'_> {
        Received {
            routing_key: "wf.run.triggered",
            redelivered: false,
            headers,
            message_id: None,
            body: b"{}",
        }
    }

    #[test]
    fn run_id_is_read_from_long_or_short_strings() {
        let mut headers = FieldTable::default();
        headers.insert("run-id".into(), text("r-1"));
        assert_eq!(received(Some(&headers)).run_id().unwrap().as_str(), "r-1");
        headers.insert("run-id".into(), AMQPValue::ShortString("r-2".into()));
        assert_eq!(received(Some(&headers)).run_id().unwrap().as_str(), "r-2");
    }

    #[test]
    fn broken_run_ids_say_what_is_wrong() {
        assert_eq!(
            received(None).run_id().unwrap_err(),
            "missing `run-id` header"
        );
        let mut headers = FieldTable::default();
        headers.insert("run-id".into(), AMQPValue::LongLongInt(7));
        assert_eq!(
            received(Some(&headers)).run_id().unwrap_err(),
            "`run-id` header is not a string"
        );
        headers.insert("run-id".into(), text(""));
        assert!(
            received(Some(&headers))
                .run_id()
                .unwrap_err()
                .contains("invalid")
        );
        headers.insert(
            "run-id".into(),
            AMQPValue::LongString(LongString::from(vec![0xff, 0xfe])),
        );
        assert!(received(Some(&headers)).run_id().is_err());
    }

    #[test]
    fn attempt_defaults_to_one_and_reads_any_integer_width() {
        assert_eq!(received(None).attempt(), Ok(1));
        let mut headers = FieldTable::default();
        headers.insert("retry-attempt".into(), AMQPValue::ShortShortUInt(3));
        assert_eq!(received(Some(&headers)).attempt(), Ok(3));
        headers.insert("retry-attempt".into(), AMQPValue::LongLongInt(0));
        assert!(received(Some(&headers)).attempt().is_err());
        headers.insert("retry-attempt".into(), text("2"));
        assert!(received(Some(&headers)).attempt().is_err());
    }

    #[test]
    fn previous_deliveries_come_from_the_broker_count_or_our_own() {
        assert_eq!(received(None).previous_deliveries(), 0);
        let mut redelivered = received(None);
        redelivered.redelivered = true;
        assert_eq!(redelivered.previous_deliveries(), 1);
        let mut headers = FieldTable::default();
        headers.insert("redelivery-count".into(), number(3));
        let mut counted = received(Some(&headers));
        counted.redelivered = true;
        assert_eq!(counted.previous_deliveries(), 4);
        assert!(!counted.counted_by_broker());
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(2));
        let quorum = received(Some(&headers));
        assert_eq!(quorum.previous_deliveries(), 2);
        assert!(quorum.counted_by_broker());
    }

    #[test]
    fn chain_run_outputs_are_keyed_by_the_last_step() {
        let step = StepName::new("load").unwrap();
        let body = single_leaf_outputs(&step, br#"{"a":[1]}"#);
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value, serde_json::json!({"load": {"a": [1]}}));
    }

    #[test]
    fn parked_messages_keep_the_input_and_add_the_reason() {
        let topology = Topology::default();
        let wf = WorkflowName::new("simple").unwrap();
        let step = StepName::new("s").unwrap();
        let mut headers = FieldTable::default();
        headers.insert("run-id".into(), text("r"));
        let input = Received {
            routing_key: "simple.run.triggered",
            redelivered: false,
            headers: Some(&headers),
            message_id: Some("m1"),
            body: b"[1]",
        };
        let failure = FailedBody {
            error: "bad".into(),
            attempt: 4,
            reason: FailureReason::RetriesExhausted,
        };
        let message = parked(&topology, &wf, &step, &input, &failure);
        assert_eq!(message.exchange, "");
        assert_eq!(message.routing_key, "inqubo.simple.parked");
        assert_eq!(message.body, b"[1]");
        let get = |k: &str| message.headers.inner().get(k).cloned();
        assert_eq!(get("run-id"), Some(text("r")));
        assert_eq!(get("parked-reason"), Some(text("retries_exhausted")));
        assert_eq!(
            get("parked-routing-key"),
            Some(text("simple.run.triggered"))
        );
        assert_eq!(get("parked-attempt"), Some(number(4)));
        assert!(message.mandatory);
    }
}
