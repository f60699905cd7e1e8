//! Lifecycle events: what runners publish about every run and step, and their JSON bodies.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{
    name::{RunId, StepName, WorkflowName},
    protocol::RoutingKey,
};

/// The kind of a lifecycle event; the last word of its routing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// A run was requested (`<workflow>.run.triggered`).
    RunTriggered,
    /// A step attempt began.
    Started,
    /// A step produced its output (the body is the output).
    Succeeded,
    /// A step attempt failed and another is scheduled.
    Retrying,
    /// A step failed for good; its input was parked.
    Failed,
    /// Every last step of a run succeeded (`<workflow>.run.succeeded`).
    RunSucceeded,
    /// A step of a run failed for good (`<workflow>.run.failed`).
    RunFailed,
    /// The run was cancelled (`<workflow>.run.cancelled`).
    RunCancelled,
    /// A step's input was not run because its run had ended (cancelled, or failed with fail
    /// fast); the input was parked so that a resume can run it.
    Skipped,
    /// A failed run was resumed (`<workflow>.run.resumed`): its parked inputs go back to their
    /// steps in the generation the `run-generation` header names.
    RunResumed,
    /// A trigger named a run that already exists (`<workflow>.run.duplicate`); no second run
    /// was started. The body says what state the existing run is in.
    RunDuplicate,
}

impl EventKind {
    /// The word used in routing keys (`triggered` for [`EventKind::RunTriggered`]).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::RunTriggered => "triggered",
            EventKind::Started => "started",
            EventKind::Succeeded => "succeeded",
            EventKind::Retrying => "retrying",
            EventKind::Failed => "failed",
            EventKind::RunSucceeded => "succeeded",
            EventKind::RunFailed => "failed",
            EventKind::RunCancelled => "cancelled",
            EventKind::Skipped => "skipped",
            EventKind::RunResumed => "resumed",
            EventKind::RunDuplicate => "duplicate",
        }
    }

    /// Parses the last word of a run event's routing key.
    pub fn from_run_event(word: &str) -> Option<Self> {
        match word {
            "triggered" => Some(EventKind::RunTriggered),
            "succeeded" => Some(EventKind::RunSucceeded),
            "failed" => Some(EventKind::RunFailed),
            "cancelled" => Some(EventKind::RunCancelled),
            "resumed" => Some(EventKind::RunResumed),
            "duplicate" => Some(EventKind::RunDuplicate),
            _ => None,
        }
    }

    /// Whether this is an event of a whole run rather than of a step.
    pub fn is_run_event(self) -> bool {
        matches!(
            self,
            EventKind::RunTriggered
                | EventKind::RunSucceeded
                | EventKind::RunFailed
                | EventKind::RunCancelled
                | EventKind::RunResumed
                | EventKind::RunDuplicate
        )
    }

    /// Whether this event ends a run (of one generation): `run.succeeded`, `run.failed` or
    /// `run.cancelled`. Exactly one of them is published per run generation.
    pub fn ends_run(self) -> bool {
        matches!(
            self,
            EventKind::RunSucceeded | EventKind::RunFailed | EventKind::RunCancelled
        )
    }

    /// Parses the last word of a step event's routing key.
    pub fn from_step_event(word: &str) -> Option<Self> {
        match word {
            "started" => Some(EventKind::Started),
            "succeeded" => Some(EventKind::Succeeded),
            "retrying" => Some(EventKind::Retrying),
            "failed" => Some(EventKind::Failed),
            "skipped" => Some(EventKind::Skipped),
            _ => None,
        }
    }

    /// Whether no further event follows for this step (or run), unless the run is resumed.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            EventKind::Succeeded
                | EventKind::Failed
                | EventKind::Skipped
                | EventKind::RunSucceeded
                | EventKind::RunFailed
                | EventKind::RunCancelled
        )
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Body of a `started` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartedBody {
    /// The attempt that began, from 1.
    pub attempt: u32,
}

/// Body of a `retrying` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryingBody {
    /// What went wrong.
    pub error: String,
    /// The attempt that failed.
    pub attempt: u32,
    /// The attempt that will run next.
    pub next_attempt: u32,
    /// How long until it runs, in milliseconds.
    pub delay_ms: u64,
}

/// Body of a `failed` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedBody {
    /// What went wrong.
    pub error: String,
    /// The attempt that failed (0 when the input could not be read at all).
    pub attempt: u32,
    /// Why the failure is final.
    pub reason: FailureReason,
}

/// Body of a `<workflow>.run.failed` event: which step failed, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunFailedBody {
    /// The step that failed.
    pub step: StepName,
    /// What went wrong.
    pub error: String,
    /// The attempt that failed.
    pub attempt: u32,
    /// Why the failure is final.
    pub reason: FailureReason,
}

/// Body of a `<workflow>.run.cancelled` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunCancelledBody {
    /// Why, as the canceller said.
    pub reason: String,
}

/// Body of a `<workflow>.run.resumed` event; the new generation is in its `run-generation`
/// header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunResumedBody {
    /// How many parked inputs went back to their steps.
    pub inputs: u32,
}

/// Body of a `<workflow>.run.duplicate` event: the trigger of a run that already exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunDuplicateBody {
    /// The existing run's state: `running`, `succeeded`, `failed` or `cancelled`.
    pub state: String,
}

/// Body of a `skipped` event: a step's input not run because its run had ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedBody {
    /// The attempt the input would have started.
    pub attempt: u32,
    /// Why: [`FailureReason::RunFailed`] or [`FailureReason::RunCancelled`].
    pub reason: FailureReason,
}

/// Why a step failed for good (also the `parked-reason` header of the parked message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureReason {
    /// The retry policy gave up.
    RetriesExhausted,
    /// The step returned a fatal error.
    Fatal,
    /// The message could not be decoded: bad JSON, wrong shape, or missing `run-id`.
    Undecodable,
    /// The step's outcome could not be routed anywhere (no queue bound for it).
    Unroutable,
    /// The message was delivered too many times without being acknowledged: its attempts
    /// keep killing or disconnecting their runner.
    RedeliveryLimit,
    /// The input, or the output the step returned for it, is larger than the runner accepts.
    TooLarge,
    /// Not run: another step of the run had failed for good, and the workflow fails fast.
    /// Resuming the run runs it.
    RunFailed,
    /// Not run: the run was cancelled.
    RunCancelled,
    /// Inqubo itself failed while handling the input (a panic in the runtime, a bug): parked
    /// with the panic's message rather than left unacknowledged.
    Internal,
}

impl FailureReason {
    /// The snake_case word used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::RetriesExhausted => "retries_exhausted",
            FailureReason::Fatal => "fatal",
            FailureReason::Undecodable => "undecodable",
            FailureReason::Unroutable => "unroutable",
            FailureReason::RedeliveryLimit => "redelivery_limit",
            FailureReason::TooLarge => "too_large",
            FailureReason::RunFailed => "run_failed",
            FailureReason::RunCancelled => "run_cancelled",
            FailureReason::Internal => "internal",
        }
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A lifecycle event as a subscriber sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct LifecycleEvent {
    /// The workflow it concerns.
    pub workflow: WorkflowName,
    /// The step it concerns, for step events.
    pub step: Option<StepName>,
    /// What happened.
    pub kind: EventKind,
    /// The run it belongs to.
    pub run_id: RunId,
    /// The attempt, for step events.
    pub attempt: Option<u32>,
    /// The run's generation: 1, and one more each time the run is resumed (the
    /// `run-generation` header; absent means 1).
    pub generation: u32,
    /// For an event of a map step: which element of how many (the `map-index` and
    /// `map-size` headers).
    pub element: Option<crate::protocol::Element>,
    /// The JSON body: the run input, the step output, or one of the bodies above.
    pub body: serde_json::Value,
}

/// How a run ended: the body of its one terminal event, read.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum RunOutcome {
    /// Every last step succeeded: their outputs, keyed by step name.
    Succeeded(serde_json::Value),
    /// A step failed for good.
    Failed(RunFailedBody),
    /// The run was cancelled.
    Cancelled(RunCancelledBody),
}

impl RunOutcome {
    /// The outcome a `run.succeeded`, `run.failed` or `run.cancelled` event reports; `None`
    /// for other events (and for a body that does not read as the event's body type).
    pub fn from_event(event: &LifecycleEvent) -> Option<Self> {
        match event.kind {
            EventKind::RunSucceeded => Some(Self::Succeeded(event.body.clone())),
            EventKind::RunFailed => serde_json::from_value(event.body.clone())
                .ok()
                .map(Self::Failed),
            EventKind::RunCancelled => serde_json::from_value(event.body.clone())
                .ok()
                .map(Self::Cancelled),
            _ => None,
        }
    }
}

/// Why a message from the events exchange is not a lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventDecodeError {
    /// The routing key is not one of the documented shapes.
    #[error("routing key `{0}` is not an inqubo event")]
    RoutingKey(String),
    /// The `run-id` header is missing or invalid.
    #[error("event `{0}` has no valid run-id header")]
    RunId(String),
    /// The body is not JSON.
    #[error("event `{key}` has a body that is not JSON: {reason}")]
    Body {
        /// The event's routing key.
        key: String,
        /// What the JSON parser said.
        reason: String,
    },
}

impl LifecycleEvent {
    /// Reads an event from its routing key, `run-id` and `attempt` headers, and body.
    pub fn from_wire(
        routing_key: &str,
        run_id: Option<&str>,
        attempt: Option<u32>,
        body: &[u8],
    ) -> Result<Self, EventDecodeError> {
        let (workflow, step, kind) = RoutingKey::from_wire(routing_key)
            .parse()
            .ok_or_else(|| EventDecodeError::RoutingKey(routing_key.to_owned()))?;
        let run_id = run_id
            .and_then(|id| RunId::new(id).ok())
            .ok_or_else(|| EventDecodeError::RunId(routing_key.to_owned()))?;
        let body = serde_json::from_slice(body).map_err(|e| EventDecodeError::Body {
            key: routing_key.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            workflow,
            step,
            kind,
            run_id,
            attempt,
            generation: 1,
            element: None,
            body,
        })
    }

    /// The event with the map element it concerns (from the `map-index` and `map-size`
    /// headers).
    #[must_use]
    pub fn with_element(mut self, element: Option<crate::protocol::Element>) -> Self {
        self.element = element;
        self
    }

    /// For an event of a map step: the element's place in its list, from 0.
    pub fn element_index(&self) -> Option<u32> {
        self.element.map(|e| e.index)
    }

    /// The event with its run generation (from the `run-generation` header).
    #[must_use]
    pub fn with_generation(mut self, generation: u32) -> Self {
        self.generation = generation.max(1);
        self
    }

    /// The event's routing key.
    pub fn routing_key(&self) -> RoutingKey {
        match &self.step {
            Some(step) => RoutingKey::step_event(&self.workflow, step, self.kind),
            None => RoutingKey::run_event(&self.workflow, self.kind),
        }
    }

    /// The event's name within its run: `<step>.<event>` for a step event, `run.<event>` for
    /// a run event, as in test trails.
    ///
    /// ```
    /// use inqubo_core::LifecycleEvent;
    /// let event = LifecycleEvent::from_wire("simple.step.get_data.started", Some("r1"), Some(1), b"{}").unwrap();
    /// assert_eq!(event.short_name(), "get_data.started");
    /// let event = LifecycleEvent::from_wire("simple.run.succeeded", Some("r1"), None, b"{}").unwrap();
    /// assert_eq!(event.short_name(), "run.succeeded");
    /// ```
    pub fn short_name(&self) -> String {
        match &self.step {
            Some(step) => format!("{step}.{}", self.kind),
            None => format!("run.{}", self.kind),
        }
    }
}

impl fmt::Display for LifecycleEvent {
    /// One line: `run <id> <routing key> [element i] [attempt n] <body>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "run {} {}", self.run_id, self.routing_key())?;
        if let Some(element) = self.element {
            write!(f, " element {} of {}", element.index, element.size)?;
        }
        if let Some(attempt) = self.attempt {
            write!(f, " attempt {attempt}")?;
        }
        write!(f, " {}", self.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_reasons_use_their_wire_words() {
        for reason in [
            FailureReason::RetriesExhausted,
            FailureReason::Fatal,
            FailureReason::Undecodable,
            FailureReason::Unroutable,
            FailureReason::RedeliveryLimit,
            FailureReason::TooLarge,
        ] {
            let json = serde_json::to_value(reason).unwrap();
            assert_eq!(json, serde_json::Value::String(reason.as_str().into()));
        }
    }

    #[test]
    fn events_decode_from_key_headers_and_body() {
        let event = LifecycleEvent::from_wire(
            "simple.step.process_data.retrying",
            Some("run-1"),
            Some(1),
            br#"{"error":"x","attempt":1,"next_attempt":2,"delay_ms":1000}"#,
        )
        .unwrap();
        assert_eq!(event.kind, EventKind::Retrying);
        assert_eq!(event.step.as_ref().unwrap().as_str(), "process_data");
        assert_eq!(
            event.routing_key().as_str(),
            "simple.step.process_data.retrying"
        );
        let body: RetryingBody = serde_json::from_value(event.body).unwrap();
        assert_eq!(body.next_attempt, 2);
    }

    #[test]
    fn events_without_run_id_or_json_are_refused() {
        assert!(matches!(
            LifecycleEvent::from_wire("simple.run.triggered", None, None, b"{}"),
            Err(EventDecodeError::RunId(_))
        ));
        assert!(matches!(
            LifecycleEvent::from_wire("simple.run.triggered", Some("r"), None, b"{"),
            Err(EventDecodeError::Body { .. })
        ));
        assert!(matches!(
            LifecycleEvent::from_wire("elsewhere", Some("r"), None, b"{}"),
            Err(EventDecodeError::RoutingKey(_))
        ));
    }
}
