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

    /// Binding patterns matching every step event and every run event but the trigger, of
    /// `workflow` or of every workflow: what an observer (`Client::subscribe`, `inqubo watch`,
    /// the monitor, the chaos harness) binds to, so that a trigger of a workflow no runner
    /// declared stays unroutable and its sender learns so.
    ///
    /// ```
    /// use inqubo_core::RoutingKey;
    /// let keys: Vec<String> = RoutingKey::observed_events(None)
    ///     .iter()
    ///     .map(|key| key.as_str().to_owned())
    ///     .collect();
    /// assert_eq!(keys[0], "*.step.#");
    /// assert!(keys.contains(&"*.run.succeeded".to_owned()));
    /// assert!(!keys.iter().any(|key| key.ends_with("triggered") || key.ends_with('#') && key != "*.step.#"));
    /// ```
    pub fn observed_events(workflow: Option<&WorkflowName>) -> [Self; 6] {
        let scope = workflow.map_or("*", WorkflowName::as_str);
        [
            Self(format!("{scope}.step.#")),
            Self(format!("{scope}.run.{}", EventKind::RunSucceeded.as_str())),
            Self(format!("{scope}.run.{}", EventKind::RunFailed.as_str())),
            Self(format!("{scope}.run.{}", EventKind::RunCancelled.as_str())),
            Self(format!("{scope}.run.{}", EventKind::RunResumed.as_str())),
            Self(format!("{scope}.run.{}", EventKind::RunDuplicate.as_str())),
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
        let observed = RoutingKey::observed_events(Some(&wf()));
        assert_eq!(observed[0].as_str(), "simple.step.#");
        assert!(
            observed
                .iter()
                .all(|key| key.as_str() != RoutingKey::run_triggered(&wf()).as_str())
        );
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
