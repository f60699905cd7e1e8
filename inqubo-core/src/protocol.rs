//! The broker-independent half of the wire protocol: routing keys and header names.
//!
//! `docs/protocol.md` is the contract; this module is its single source in code. Everything
//! that names a routing key or a header goes through here, so the names cannot drift.

use std::fmt;

use crate::{
    event::EventKind,
    name::{StepName, WorkflowName},
};

/// The default prefix: the name of the topic exchange and the first word of every queue name.
pub const DEFAULT_PREFIX: &str = "inqubo";

/// Names of the AMQP headers Inqubo reads and writes.
pub mod header {
    /// The run a message belongs to (string). Required on triggers and on every event.
    pub const RUN_ID: &str = "run-id";
    /// The attempt that produced an event (integer, from 1).
    pub const ATTEMPT: &str = "attempt";
    /// On a retry message only: the attempt it starts (integer, from 2).
    pub const RETRY_ATTEMPT: &str = "retry-attempt";
    /// On a parked message: why it was parked (a [`FailureReason`](crate::FailureReason)).
    pub const PARKED_REASON: &str = "parked-reason";
    /// On a parked message: the error text.
    pub const PARKED_ERROR: &str = "parked-error";
    /// On a parked message: the step whose input it was.
    pub const PARKED_STEP: &str = "parked-step";
    /// On a parked message: the routing key it arrived with.
    pub const PARKED_ROUTING_KEY: &str = "parked-routing-key";
    /// On a parked message: the attempt that failed (integer).
    pub const PARKED_ATTEMPT: &str = "parked-attempt";
    /// On classic queues: how many times the message was redelivered unacknowledged
    /// (integer). Quorum queues count this themselves in `x-delivery-count`.
    pub const REDELIVERY_COUNT: &str = "redelivery-count";
    /// W3C trace context (`00-<trace id>-<span id>-01`): the same trace id on every message
    /// of a run.
    pub const TRACEPARENT: &str = "traceparent";
    /// On a workflow announcement: the workflow's name.
    pub const WORKFLOW: &str = "workflow";
    /// On a join piece: the parent whose output it carries.
    pub const JOIN_PARENT: &str = "join-parent";
    /// On a join piece: present (true) when the piece reports a failed run instead.
    pub const JOIN_FAILED: &str = "join-failed";
    /// Set by quorum queues on a redelivered message: how many times it was returned.
    pub const X_DELIVERY_COUNT: &str = "x-delivery-count";
}

/// The resolution of retry delays: every delay is rounded up to a multiple of this.
pub const DELAY_TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// Number of retry delay tiers; delays are at most `2^DELAY_TIERS - 1` ticks.
pub const DELAY_TIERS: u32 = 25;

/// The longest retry delay; longer ones are shortened to it (about 38.8 days).
pub const MAX_DELAY: std::time::Duration =
    std::time::Duration::from_millis(100 * ((1 << DELAY_TIERS) - 1));

/// `delay` in whole ticks, rounded up and capped at the longest delay.
pub fn delay_ticks(delay: std::time::Duration) -> u64 {
    let ticks = delay.as_nanos().div_ceil(DELAY_TICK.as_nanos());
    u64::try_from(ticks)
        .unwrap_or(u64::MAX)
        .min((1 << DELAY_TIERS) - 1)
}

/// The delay a retry actually waits for a requested `delay`: rounded up to [`DELAY_TICK`],
/// capped at [`MAX_DELAY`]. Every runtime applies it, and `retrying` events report it.
pub fn effective_delay(delay: std::time::Duration) -> std::time::Duration {
    DELAY_TICK * u32::try_from(delay_ticks(delay)).unwrap_or(u32::MAX)
}

/// The content type of every Inqubo message body.
pub const CONTENT_TYPE: &str = "application/json";

/// An AMQP routing key built from workflow, step and event names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoutingKey(String);

impl RoutingKey {
    /// `<workflow>.run.triggered`: starts a run.
    pub fn run_triggered(workflow: &WorkflowName) -> Self {
        Self(format!("{workflow}.run.triggered"))
    }

    /// `<workflow>.run.<event>`: a run's event (`triggered`, `succeeded` or `failed`).
    pub fn run_event(workflow: &WorkflowName, kind: EventKind) -> Self {
        Self(format!("{workflow}.run.{}", kind.as_str()))
    }

    /// `<workflow>.step.<step>.<event>`: a step's lifecycle event.
    pub fn step_event(workflow: &WorkflowName, step: &StepName, kind: EventKind) -> Self {
        Self(format!("{workflow}.step.{step}.{}", kind.as_str()))
    }

    /// The key a step's queue is bound to: its parent's `succeeded` event, or the trigger for
    /// a first step.
    pub fn step_input(workflow: &WorkflowName, parent: Option<&StepName>) -> Self {
        match parent {
            Some(parent) => Self::step_event(workflow, parent, EventKind::Succeeded),
            None => Self::run_triggered(workflow),
        }
    }

    /// A binding pattern matching every event of `workflow`, or of every workflow.
    pub fn all_events(workflow: Option<&WorkflowName>) -> Self {
        match workflow {
            Some(workflow) => Self(format!("{workflow}.#")),
            None => Self("#".to_owned()),
        }
    }

    /// Wraps a key received from the broker.
    pub fn from_wire(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Splits a key into workflow, step (for step events) and event kind.
    ///
    /// ```
    /// use inqubo_core::{EventKind, RoutingKey};
    /// let (wf, step, kind) = RoutingKey::from_wire("simple.step.get_data.succeeded").parse().unwrap();
    /// assert_eq!((wf.as_str(), step.unwrap().as_str(), kind), ("simple", "get_data", EventKind::Succeeded));
    /// ```
    pub fn parse(&self) -> Option<(WorkflowName, Option<StepName>, EventKind)> {
        let words: Vec<&str> = self.0.split('.').collect();
        match words.as_slice() {
            [workflow, "run", event] => Some((
                WorkflowName::new(*workflow).ok()?,
                None,
                EventKind::from_run_event(event)?,
            )),
            [workflow, "step", step, event] => {
                let kind = EventKind::from_step_event(event)?;
                Some((
                    WorkflowName::new(*workflow).ok()?,
                    Some(StepName::new(*step).ok()?),
                    kind,
                ))
            }
            _ => None,
        }
    }
}

impl fmt::Display for RoutingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wf() -> WorkflowName {
        WorkflowName::new("simple").unwrap()
    }
    fn step(name: &str) -> StepName {
        StepName::new(name).unwrap()
    }

    #[test]
    fn keys_follow_the_documented_shapes() {
        assert_eq!(
            RoutingKey::run_triggered(&wf()).as_str(),
            "simple.run.triggered"
        );
        for (kind, word) in [
            (EventKind::Started, "started"),
            (EventKind::Succeeded, "succeeded"),
            (EventKind::Retrying, "retrying"),
            (EventKind::Failed, "failed"),
        ] {
            assert_eq!(
                RoutingKey::step_event(&wf(), &step("get_data"), kind).as_str(),
                format!("simple.step.get_data.{word}")
            );
        }
        assert_eq!(
            RoutingKey::step_input(&wf(), None).as_str(),
            "simple.run.triggered"
        );
        assert_eq!(
            RoutingKey::step_input(&wf(), Some(&step("a"))).as_str(),
            "simple.step.a.succeeded"
        );
        assert_eq!(RoutingKey::all_events(Some(&wf())).as_str(), "simple.#");
    }

    #[test]
    fn parse_round_trips_and_refuses_foreign_keys() {
        let key = RoutingKey::step_event(&wf(), &step("x"), EventKind::Retrying);
        assert_eq!(
            key.parse(),
            Some((wf(), Some(step("x")), EventKind::Retrying))
        );
        assert_eq!(
            RoutingKey::run_triggered(&wf()).parse(),
            Some((wf(), None, EventKind::RunTriggered))
        );
        for foreign in [
            "simple",
            "simple.step.x.exploded",
            "a.b.c.d.e",
            "simple.run.started",
        ] {
            assert_eq!(RoutingKey::from_wire(foreign).parse(), None, "{foreign}");
        }
    }
}
