//! What follows an attempt: its `started` event, and the messages its outcome calls for
//! (success, retry, failure for good, an unroutable outcome, a panic of the runtime).

use crate::{
    attempt::AttemptOutcome,
    engine::{Attempt, Effects, Engine},
    event::{EventKind, FailedBody, FailureReason, RunFailedBody, StartedBody},
    name::StepName,
    protocol::{self, AttemptId, FanOut, Incoming, Outgoing, RUN_JOIN, effective_delay, json},
    workflow::StepNode,
};

/// How a map starts after its parent succeeded.
enum MapOpening {
    /// One input per element.
    Elements(FanOut),
    /// The list is empty: the map's output, `[]`, straight to its collectors.
    Empty(Vec<Outgoing>),
}

impl Engine {
    /// The `started` event of `attempt`, unless runners are told not to announce attempts.
    pub fn started(&self, attempt: &Attempt) -> Option<Outgoing> {
        self.limits.publish_started.then(|| {
            attempt.id.notice(
                EventKind::Started,
                &StartedBody {
                    attempt: attempt.id.attempt,
                },
            )
        })
    }

    /// What follows `outcome` of `attempt`, run on `incoming`.
    pub fn finished(
        &self,
        attempt: &Attempt,
        incoming: &Incoming<'_>,
        outcome: AttemptOutcome,
    ) -> Effects {
        let number = attempt.id.attempt;
        match outcome {
            AttemptOutcome::Succeeded { output } if output.len() > self.limits.max_input_bytes => {
                // The output is the children's input: one they would refuse, or the broker
                // would refuse to carry, fails the step here, before anything is published.
                let failure = FailedBody {
                    error: format!(
                        "output is {} bytes, more than the {} a step may pass on",
                        output.len(),
                        self.limits.max_input_bytes
                    ),
                    attempt: number,
                    reason: FailureReason::TooLarge,
                };
                self.park(&attempt.id.step, incoming, failure, &attempt.id.trace)
            }
            AttemptOutcome::Succeeded { output } => match self.success_messages(attempt, output) {
                Ok(effects) => effects,
                Err((error, reason)) => {
                    let failure = FailedBody {
                        error,
                        attempt: number,
                        reason,
                    };
                    self.park(&attempt.id.step, incoming, failure, &attempt.id.trace)
                }
            },
            AttemptOutcome::Retry { error, delay } => {
                let delay = effective_delay(delay);
                let body = crate::event::RetryingBody {
                    error,
                    attempt: number,
                    next_attempt: number.saturating_add(1),
                    delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                };
                Effects::publish(vec![
                    attempt.id.notice(EventKind::Retrying, &body),
                    attempt.id.retry(delay, incoming.body.to_vec()),
                ])
            }
            AttemptOutcome::Failed { error, reason } => {
                let failure = FailedBody {
                    error,
                    attempt: number,
                    reason,
                };
                self.park(&attempt.id.step, incoming, failure, &attempt.id.trace)
            }
        }
    }

    /// What follows when handling the delivery `incoming` on `step`'s queue panicked inside
    /// the runtime (not in the step, whose panics are retryable failures): the input is parked
    /// with reason `internal` and the panic's message, and `failed` is published, so that the
    /// delivery can be acknowledged instead of left hanging.
    pub fn internal_failure(
        &self,
        step: &StepName,
        incoming: &Incoming<'_>,
        panic: &str,
        trace: &str,
    ) -> Effects {
        let failure = FailedBody {
            error: format!("the runner failed while handling this input: {panic}"),
            attempt: incoming.attempt().unwrap_or(0),
            reason: FailureReason::Internal,
        };
        self.park(step, incoming, failure, trace)
    }

    /// What follows when the broker could not route a mandatory message of `attempt`'s
    /// outcome (published with `routing_key`): the step fails for good as `unroutable`.
    pub fn unroutable(
        &self,
        attempt: &Attempt,
        incoming: &Incoming<'_>,
        routing_key: &str,
    ) -> Effects {
        let failure = FailedBody {
            error: format!("no queue is bound to `{routing_key}`"),
            attempt: attempt.id.attempt,
            reason: FailureReason::Unroutable,
        };
        self.park(&attempt.id.step, incoming, failure, &attempt.id.trace)
    }

    /// `succeeded` (which a queue must receive if a plain child listens for it), a piece for
    /// every join child, the elements of every map child, and the run's end when this is a
    /// last step. A list a map child cannot take (not a list, or too long) fails the step.
    fn success_messages(
        &self,
        attempt: &Attempt,
        output: Vec<u8>,
    ) -> Result<Effects, (String, FailureReason)> {
        let id = &attempt.id;
        let Some(node) = self.workflow.step(id.step.as_str()) else {
            return Ok(Effects::default());
        };
        let mut plain_children = false;
        let mut messages = Vec::with_capacity(2);
        let mut fan_out = None;
        for child in node.children() {
            let Some(child_node) = self.workflow.step(child.as_str()) else {
                continue;
            };
            if child_node.is_map() {
                match self.map_opening(id, child_node, &output)? {
                    MapOpening::Elements(elements) => fan_out = Some(elements),
                    MapOpening::Empty(pieces) => messages.extend(pieces),
                }
            } else if child_node.is_join() {
                messages.push(self.piece_of(id, child.as_str(), output.clone()));
            } else {
                plain_children = true;
                if id.priority.lane().is_some() {
                    // A prioritized run's child takes its input in its class's lane (its
                    // queue ignores the `succeeded` event's copy).
                    messages.push(protocol::lane_input(id, child, output.clone()));
                }
            }
        }
        if node.children().is_empty() {
            // The run join decides how a run ends, for chains too: exactly once.
            messages.push(self.piece_of(id, RUN_JOIN, output.clone()));
        }
        messages.insert(0, id.event(EventKind::Succeeded, output, plain_children));
        let messages = messages
            .into_iter()
            .map(|m| m.with_trace(&id.trace))
            .collect();
        Ok(Effects {
            fan_out: fan_out.map(|f: FanOut| Box::new(f.with_trace(&id.trace))),
            ..Effects::publish(messages)
        })
    }

    /// The piece that brings the output of attempt `id` to `join`: an element's result when
    /// the attempt ran on one.
    fn piece_of(&self, id: &AttemptId, join: &str, output: Vec<u8>) -> Outgoing {
        let workflow = self.workflow.name();
        let settled = self
            .workflow
            .step(id.step.as_str())
            .is_some_and(StepNode::collects_errors);
        let output = if settled && id.element.is_some() {
            // `Ok(output)`, as serde writes a `Result`.
            [&b"{\"Ok\":"[..], &output, b"}"].concat()
        } else {
            output
        };
        match id.element {
            Some(element) => protocol::element_piece(
                workflow,
                join,
                &id.run_id,
                id.generation,
                &id.step,
                element,
                output,
            ),
            None => protocol::join_piece(
                workflow,
                join,
                &id.run_id,
                id.generation,
                &id.step,
                output,
                false,
            ),
        }
        .with_priority(id.priority)
    }

    /// The piece that brings a failed element's `Err` to `join`, for a map that collects
    /// errors.
    fn piece_of_failure(&self, id: &AttemptId, join: &str, error: Vec<u8>) -> Outgoing {
        match id.element {
            Some(element) => protocol::element_piece(
                self.workflow.name(),
                join,
                &id.run_id,
                id.generation,
                &id.step,
                element,
                error,
            ),
            None => self.piece_of(id, join, error),
        }
        .with_trace(&id.trace)
    }

    /// What starts `map` after attempt `id` returned `list`: one input per element; for an
    /// empty list, the map's empty result straight to its collectors.
    fn map_opening(
        &self,
        id: &AttemptId,
        map: &StepNode,
        list: &[u8],
    ) -> Result<MapOpening, (String, FailureReason)> {
        let workflow = self.workflow.name();
        let elements = FanOut::new(
            workflow,
            map.name(),
            &id.run_id,
            id.generation,
            list.to_vec(),
        )
        .map(|fan_out| fan_out.with_priority(id.priority))
        .map_err(|error| {
            let reason = match error {
                protocol::SplitError::TooLong { .. } => FailureReason::TooLarge,
                _ => FailureReason::Internal,
            };
            (error.to_string(), reason)
        })?;
        if !elements.is_empty() {
            return Ok(MapOpening::Elements(elements));
        }
        let pieces = self
            .collectors(map)
            .into_iter()
            .map(|join| {
                protocol::join_piece(
                    workflow,
                    join,
                    &id.run_id,
                    id.generation,
                    map.name(),
                    b"[]".to_vec(),
                    false,
                )
            })
            .collect();
        Ok(MapOpening::Empty(pieces))
    }

    /// Where a map's results are collected: the steps after it, or the run join if it is a
    /// last step.
    fn collectors<'a>(&self, map: &'a StepNode) -> Vec<&'a str> {
        if map.children().is_empty() {
            vec![RUN_JOIN]
        } else {
            map.children().iter().map(StepName::as_str).collect()
        }
    }

    /// Parks `incoming` with `failure`: the parked copy, and, when the run is known, `failed`
    /// and the news of the failure to the run's end and every join downstream.
    pub(super) fn park(
        &self,
        step: &StepName,
        incoming: &Incoming<'_>,
        failure: FailedBody,
        trace: &str,
    ) -> Effects {
        let workflow = self.workflow.name();
        let mut publish = vec![protocol::parked(
            workflow,
            step.as_str(),
            incoming,
            &failure,
        )];
        if let Ok(run_id) = incoming.run_id() {
            let id = AttemptId {
                workflow: workflow.clone(),
                step: step.clone(),
                run_id,
                attempt: failure.attempt,
                generation: incoming.generation(),
                element: incoming.element(),
                priority: self.priority_of(incoming),
                trace: trace.to_owned(),
            };
            publish.push(id.notice(EventKind::Failed, &failure));
            let settled = self
                .workflow
                .step(step.as_str())
                .filter(|node| node.collects_errors() && id.element.is_some());
            match settled {
                // A map that collects errors: the failure is this element's result.
                Some(map) => {
                    let error = json(&Result::<(), &FailedBody>::Err(&failure));
                    for join in self.collectors(map) {
                        publish.push(self.piece_of_failure(&id, join, error.clone()));
                    }
                }
                None => publish.extend(self.run_failure_notices(&id, &failure)),
            }
        }
        Effects {
            publish,
            failure: Some(failure),
            fan_out: None,
        }
    }

    /// What must learn that a step failed for good: the run's end (at once for a chain,
    /// through the run join otherwise), and every join downstream, which can no longer fire.
    pub(super) fn run_failure_notices(
        &self,
        id: &AttemptId,
        failure: &FailedBody,
    ) -> Vec<Outgoing> {
        let workflow = self.workflow.name();
        let body = RunFailedBody {
            step: id.step.clone(),
            error: failure.error.clone(),
            attempt: failure.attempt,
            reason: failure.reason,
        };
        let body = json(&body);
        self.workflow
            .joins_after(&id.step)
            .into_iter()
            .map(|join| join.name().as_str())
            .chain([RUN_JOIN])
            .map(|join| {
                protocol::join_piece(
                    workflow,
                    join,
                    &id.run_id,
                    id.generation,
                    &id.step,
                    body.clone(),
                    true,
                )
                .with_trace(&id.trace)
            })
            .collect()
    }
}
