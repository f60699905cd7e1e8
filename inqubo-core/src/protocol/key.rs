//! Routing keys on the events exchange: `<workflow>.run.<event>` and
//! `<workflow>.step.<step>.<event>`.

use std::fmt;

use crate::{
    event::EventKind,
    name::{StepName, WorkflowName},
};

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

    /// A binding pattern matching the run events (`triggered`, `succeeded`, `failed`) of
    /// `workflow`.
    pub fn run_events(workflow: &WorkflowName) -> Self {
        Self(format!("{workflow}.run.*"))
    }

    /// The keys that tell a run's outcome: `run.succeeded`, `run.failed`, `run.cancelled` and
    /// `run.duplicate` (the trigger named a run that exists). What a client waiting for a run
    /// binds to: unlike `<workflow>.run.*`, it does not match the trigger, so a trigger of a
    /// workflow no runner declared stays unroutable.
    pub fn run_outcomes(workflow: &WorkflowName) -> [Self; 4] {
        [
            Self::run_event(workflow, EventKind::RunSucceeded),
            Self::run_event(workflow, EventKind::RunFailed),
            Self::run_event(workflow, EventKind::RunCancelled),
            Self::run_event(workflow, EventKind::RunDuplicate),
        ]
    }

    /// The keys of `workflow`'s events that change a run for its remaining steps:
    /// `run.failed`, `run.cancelled` and `run.resumed` (what the run-state stream is bound
    /// to).
    pub fn run_states(workflow: &WorkflowName) -> [Self; 3] {
        [
            Self::run_event(workflow, EventKind::RunFailed),
            Self::run_event(workflow, EventKind::RunCancelled),
            Self::run_event(workflow, EventKind::RunResumed),
        ]
    }

    /// Binding patterns matching every step event and every run end of every workflow, but
    /// no trigger: what an observer (the monitor, the chaos harness) binds to, so that a
    /// trigger of an unknown workflow stays unroutable.
    pub fn observed_events() -> [Self; 6] {
        [
            Self("*.step.#".to_owned()),
            Self(format!("*.run.{}", EventKind::RunSucceeded.as_str())),
            Self(format!("*.run.{}", EventKind::RunFailed.as_str())),
            Self(format!("*.run.{}", EventKind::RunCancelled.as_str())),
            Self(format!("*.run.{}", EventKind::RunResumed.as_str())),
            Self(format!("*.run.{}", EventKind::RunDuplicate.as_str())),
        ]
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
