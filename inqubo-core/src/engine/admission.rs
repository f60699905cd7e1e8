//! The rules for admitting a delivery on a step's queue: refuse it (park it, move it to the
//! redelivered queue, count it round again), hand it to the run join first (unique runs), or
//! run it as an attempt.

use crate::{
    engine::{Effects, Engine, RunEnd, RunEnding, RunState},
    event::{EventKind, FailedBody, FailureReason, SkippedBody},
    name::{RunId, StepName},
    protocol::{self, AttemptId, Incoming, header},
    step::StepContext,
    workflow::StepNode,
};

/// Where a delivery was taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// The step's own queue.
    Step,
    /// The workflow's redelivered queue.
    Redelivered,
    /// The queue of a step limited across the fleet (a single active consumer): its
    /// redeliveries are counted where they are.
    InPlace,
}

/// What to do with a delivery on a step's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum Admission {
    /// Run this attempt of the step.
    Run(Attempt),
    /// Do not run it: execute these effects (a park, or a counted redelivery) and acknowledge.
    Settle(Effects),
}

/// One attempt of one step of one run, admitted to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub(super) id: AttemptId,
}

impl Attempt {
    /// What identifies the attempt on the wire.
    pub fn id(&self) -> &AttemptId {
        &self.id
    }

    /// The run.
    pub fn run_id(&self) -> &RunId {
        &self.id.run_id
    }

    /// The attempt number, from 1.
    pub fn number(&self) -> u32 {
        self.id.attempt
    }

    /// The context the step function receives.
    pub fn context(&self) -> StepContext {
        StepContext::new(
            self.id.run_id.clone(),
            self.id.workflow.clone(),
            self.id.step.clone(),
            self.id.attempt,
        )
        .with_element(self.id.element.map(|e| e.index))
    }
}

impl Engine {
    /// Decides whether the delivery `incoming` on `step`'s queue may run.
    ///
    /// `trace` is the `traceparent` of whatever this delivery makes the runner publish (a
    /// span of the run's trace, chosen by the driver). `known` is what the driver knows of the
    /// run from the run-state feed: an input of a cancelled run, or of a failed generation of
    /// a workflow that fails fast, is parked without running (a resume runs it); an input of
    /// a generation older than the run's latest resume runs in that latest generation.
    ///
    /// A delivery the broker had handed out before without an acknowledgement (its runner
    /// died or lost its connection, running it or only holding it) does not run here: it
    /// moves to the workflow's redelivered queue, see [`Engine::admit_redelivered`].
    pub fn admit(
        &self,
        step: &StepName,
        incoming: &Incoming<'_>,
        trace: &str,
        known: RunState,
    ) -> Admission {
        self.admit_in(Lane::Step, step, incoming, trace, known)
    }

    /// Like [`Engine::admit`], for a delivery from the workflow's redelivered queue, which
    /// each runner takes one at a time: every delivery there starts at once, so each one the
    /// broker hands out again is an attempt that killed or cut off its runner, and past
    /// [`Limits::max_redeliveries`](crate::engine::Limits::max_redeliveries) of them the input
    /// is parked as `redelivery_limit`. The neighbours a runner held when it died are moved
    /// there too, but never counted: they ran alone afterwards.
    pub fn admit_redelivered(
        &self,
        step: &StepName,
        incoming: &Incoming<'_>,
        trace: &str,
        known: RunState,
    ) -> Admission {
        self.admit_in(Lane::Redelivered, step, incoming, trace, known)
    }

    fn admit_in(
        &self,
        lane: Lane,
        step: &StepName,
        incoming: &Incoming<'_>,
        trace: &str,
        known: RunState,
    ) -> Admission {
        let attempt = incoming.attempt().unwrap_or(0);
        let refuse = |reason, attempt, error| {
            let failure = FailedBody {
                error,
                attempt,
                reason,
            };
            Admission::Settle(self.park(step, incoming, failure, trace))
        };
        if incoming.body.len() > self.limits.max_input_bytes {
            let error = format!(
                "input is {} bytes, more than the {} accepted",
                incoming.body.len(),
                self.limits.max_input_bytes
            );
            return refuse(FailureReason::TooLarge, attempt, error);
        }
        if lane == Lane::Step && self.is_lane_copy_elsewhere(incoming) {
            // A prioritized run's input, through its parent's `succeeded` event: the copy in
            // its class's lane runs it.
            return Admission::Settle(Effects::default());
        }
        let node = self.workflow.step(step.as_str());
        let workflow = self.workflow.name();
        let carried = incoming.carried_redeliveries();
        // A step limited across the fleet has one consumer whose prefetch it all starts: a
        // delivery there started, so its redeliveries count where they are.
        let in_place = node.is_some_and(StepNode::single_consumer);
        let lane = match lane {
            Lane::Step if in_place => Lane::InPlace,
            other => other,
        };
        let deliveries = match lane {
            Lane::InPlace => carried.saturating_add(incoming.returned()),
            Lane::Step if incoming.returned() > 0 => {
                // Whether it started on the runner that held it is unknown: find out alone.
                let moved = protocol::redelivered(workflow, step, incoming, carried);
                return Admission::Settle(Effects::publish(vec![moved]));
            }
            Lane::Step => carried,
            Lane::Redelivered => {
                if incoming.headers.text(header::REDELIVERED_STEP) != Some(step.as_str()) {
                    let error = format!(
                        "in the redelivered queue without `{}` naming this workflow's step",
                        header::REDELIVERED_STEP
                    );
                    return refuse(FailureReason::Undecodable, attempt, error);
                }
                carried.saturating_add(incoming.returned())
            }
        };
        if deliveries > self.limits.max_redeliveries {
            let error = format!(
                "redelivered {deliveries} times without being acknowledged; \
                 its attempts keep killing or disconnecting their runner"
            );
            return refuse(FailureReason::RedeliveryLimit, attempt, error);
        }
        if lane != Lane::Step && incoming.redelivered && !incoming.counted_by_broker() {
            // A classic queue does not count redeliveries: send the message round again with
            // our own count, so that a message that keeps crashing its runner is parked.
            let again = match lane {
                Lane::InPlace => protocol::recounted(workflow, step, incoming, deliveries),
                _ => protocol::redelivered(workflow, step, incoming, deliveries),
            };
            return Admission::Settle(Effects::publish(vec![again]));
        }
        let checked = incoming
            .run_id()
            .and_then(|run_id| Ok((run_id, incoming.attempt()?)));
        let (run_id, attempt) = match checked {
            Ok(found) => found,
            Err(error) => return refuse(FailureReason::Undecodable, 0, error.to_string()),
        };
        if let Some(gate) = self.gate(step, incoming, &run_id, attempt, trace) {
            return Admission::Settle(gate);
        }
        // An input of an older generation that arrives after a resume (a sibling redelivered,
        // or back from the delay tiers) belongs to the run's current generation.
        let generation = incoming.generation().max(known.resumed);
        let skip = match known.end {
            Some(RunEnd {
                how: RunEnding::Cancelled,
                ..
            }) => Some(FailureReason::RunCancelled),
            Some(RunEnd {
                how: RunEnding::Failed,
                generation: failed,
            }) if self.workflow.fails_fast() && generation <= failed => {
                Some(FailureReason::RunFailed)
            }
            _ => None,
        };
        let id = AttemptId {
            workflow: self.workflow.name().clone(),
            step: step.clone(),
            run_id,
            attempt,
            generation,
            element: incoming.element(),
            priority: self.priority_of(incoming),
            trace: trace.to_owned(),
        };
        if let Some(reason) = skip {
            let failure = FailedBody {
                error: format!(
                    "not run: the run {}",
                    if reason == FailureReason::RunCancelled {
                        "was cancelled"
                    } else {
                        "failed"
                    }
                ),
                attempt,
                reason,
            };
            return Admission::Settle(Effects {
                publish: vec![
                    protocol::parked(self.workflow.name(), step.as_str(), incoming, &failure),
                    id.notice(EventKind::Skipped, &SkippedBody { attempt, reason }),
                ],
                failure: Some(failure),
                fan_out: None,
            });
        }
        if node.is_none() {
            let error = format!("workflow `{}` has no step `{step}`", self.workflow.name());
            return refuse(FailureReason::Undecodable, attempt, error);
        }
        Admission::Run(Attempt { id })
    }

    /// Whether `incoming` is a `succeeded` event of a run of a class other than `normal`, whose
    /// children's inputs travel in their class's lane instead.
    fn is_lane_copy_elsewhere(&self, incoming: &Incoming<'_>) -> bool {
        self.priority_of(incoming).lane().is_some()
            && matches!(
                crate::RoutingKey::from_wire(incoming.routing_key).parse(),
                Some((_, Some(_), crate::EventKind::Succeeded))
            )
    }

    /// Unique runs: a trigger that reaches a first step goes to the run join first, which
    /// starts the run only if it does not know it (see [`WorkflowBuilder::unique_runs`]).
    /// `None` if `incoming` is not such a trigger (it was admitted, it is a retry or a resume,
    /// or runs need not be unique).
    ///
    /// [`WorkflowBuilder::unique_runs`]: crate::WorkflowBuilder::unique_runs
    fn gate(
        &self,
        step: &StepName,
        incoming: &Incoming<'_>,
        run_id: &RunId,
        attempt: u32,
        trace: &str,
    ) -> Option<Effects> {
        let fresh = attempt == 1
            && incoming.generation() == 1
            && !incoming.headers.contains(protocol::header::RUN_ADMITTED);
        let first = self
            .workflow
            .step(step.as_str())
            .is_some_and(|node| node.parents().is_empty());
        if !(self.workflow.unique_runs() && fresh && first) {
            return None;
        }
        let gatekeeper = self.workflow.gatekeeper().map(StepNode::name);
        if gatekeeper != Some(step) {
            // Another first step's copy of the trigger: the gatekeeper's copy is admitted for
            // every first step at once.
            return Some(Effects::default());
        }
        // It keeps the trigger's `traceparent`, so that the first step's span is the
        // trigger's child; `trace` only stands in for a trigger that came without one.
        let mut begin = protocol::run_begin(self.workflow.name(), run_id, incoming);
        if incoming.traceparent().is_none() {
            begin = begin.with_trace(trace);
        }
        Some(Effects::publish(vec![begin]))
    }
}
