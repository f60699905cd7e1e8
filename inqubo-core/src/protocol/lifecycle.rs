//! The messages of a run's lifecycle beyond its steps: cancel requests and their answers, and
//! resuming a failed run from its parked inputs.

use std::time::Duration;

use serde::Serialize;

use crate::{
    event::{EventKind, RunCancelledBody, RunResumedBody},
    name::{RunId, StepName, WorkflowName},
    protocol::{
        Destination, Incoming, Names, Outgoing, RUN_JOIN, RoutingKey,
        header::{self, Headers},
        json,
        set_aside::PARKED_ID,
    },
};

/// A request to cancel run `run_id`, bound for its run join (the one place that decides how
/// a run ends). `reply_to`, if given, names a queue that gets the answer ([`CancelReply`]).
pub fn cancel_request(
    workflow: &WorkflowName,
    run_id: &RunId,
    reason: &str,
    reply_to: Option<&str>,
) -> Outgoing {
    let mut headers = Headers::new()
        .with(header::RUN_ID, run_id.as_str())
        .with(header::JOIN_CANCEL, true);
    if let Some(queue) = reply_to {
        headers.insert(header::REPLY_TO, queue);
    }
    Outgoing {
        destination: Destination::Join {
            workflow: workflow.clone(),
            join: RUN_JOIN.to_owned(),
            slot: Names::join_slot(run_id.as_str()),
        },
        body: json(&RunCancelledBody {
            reason: reason.to_owned(),
        }),
        headers,
        inherit_headers: false,
        message_id: format!("{run_id}:{workflow}:cancel"),
        mandatory: true,
    }
}

/// The answer to a cancel request, for the queue its `reply-to` header named.
pub fn cancel_reply(queue: &str, run_id: &RunId, reply: &CancelReply) -> Outgoing {
    Outgoing {
        destination: Destination::Reply(queue.to_owned()),
        body: json(reply),
        headers: Headers::new().with(header::RUN_ID, run_id.as_str()),
        inherit_headers: false,
        message_id: format!("{run_id}:cancel-reply"),
        mandatory: false,
    }
}

/// What a run join answers a cancel request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
#[non_exhaustive]
pub enum CancelReply {
    /// The run is cancelled: `run.cancelled` was published.
    Cancelled,
    /// The run had already ended; nothing changed.
    Refused {
        /// How it ended: `succeeded`, `failed` or `cancelled`.
        ended: String,
    },
}

/// A parked input sent back to the step it was parked from (`inqubo parked replay`,
/// `inqubo run resume`): the next attempt of that step, in generation `generation` of its run
/// (one above the generation it was parked in, the same for every input a resume sends).
///
/// It keeps the input's `run-id` and `traceparent`; its `retry-attempt` continues from the
/// parked attempt, so that the history shows the new attempt after the failed one. `None` if
/// the parked message names no step of `workflow` it can go back to (a join piece), or was
/// parked because its run was cancelled (it would only be parked again).
pub fn resume(workflow: &WorkflowName, parked: &Incoming<'_>, generation: u32) -> Option<Outgoing> {
    let cancelled = crate::FailureReason::RunCancelled.as_str();
    if parked.headers.text(header::PARKED_REASON) == Some(cancelled) {
        return None;
    }
    let step = parked
        .headers
        .text(header::PARKED_STEP)
        .and_then(|name| StepName::new(name).ok())?;
    let mut headers = Headers::new().with(header::RUN_GENERATION, generation);
    // Not `run-priority`: this side does not know whether the workflow has lanes (a header a
    // client put on a trigger of a workflow without them would make the input unroutable),
    // so a resumed run goes on in the `normal` lane.
    for name in [header::RUN_ID, header::TRACEPARENT] {
        if let Some(value) = parked.headers.text(name) {
            headers.insert(name, value);
        }
    }
    if let Some(element) = parked.element() {
        element.mark(&mut headers);
    }
    let failed_attempt = parked
        .headers
        .int(header::PARKED_ATTEMPT)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0);
    if failed_attempt >= 1 {
        headers.insert(header::RETRY_ATTEMPT, failed_attempt.saturating_add(1));
    }
    let original = parked.message_id.unwrap_or("parked");
    Some(Outgoing {
        destination: Destination::Step {
            workflow: workflow.clone(),
            step,
            delay: Duration::ZERO,
        },
        body: parked.body.to_vec(),
        headers,
        inherit_headers: false,
        message_id: format!(
            "resume:g{generation}:{}",
            original.strip_prefix(PARKED_ID).unwrap_or(original)
        ),
        mandatory: true,
    })
}

/// `<workflow>.run.resumed`: run `run_id` goes on in generation `generation`, from `inputs`
/// parked inputs. Every runner follows it (the run-state stream), so that an input of an older
/// generation that reaches a step after the resume runs in the new generation instead of
/// being parked as `run_failed`. Published, and confirmed, before the inputs go back.
pub fn run_resumed(
    workflow: &WorkflowName,
    run_id: &RunId,
    generation: u32,
    inputs: usize,
) -> Outgoing {
    Outgoing {
        destination: Destination::Events(RoutingKey::run_event(workflow, EventKind::RunResumed)),
        body: json(&RunResumedBody {
            inputs: u32::try_from(inputs).unwrap_or(u32::MAX),
        }),
        headers: Headers::new()
            .with(header::RUN_ID, run_id.as_str())
            .with(header::RUN_GENERATION, generation),
        inherit_headers: false,
        message_id: format!("{run_id}:{workflow}:resumed:g{generation}"),
        mandatory: false,
    }
}

/// The generation a resume of `parked` (every parked message of one run) starts: one above
/// the newest they were parked in.
pub fn next_generation(parked: &[Incoming<'_>]) -> u32 {
    parked
        .iter()
        .map(Incoming::generation)
        .max()
        .unwrap_or(1)
        .saturating_add(1)
}

/// Resumes a failed run from its parked inputs (`parked`, every parked message of the run):
/// each goes back to its step as the next attempt, all in the generation after the newest
/// they were parked in. The result lines up with `parked`: `None` for what stays parked
/// (inputs of a cancelled run, pieces that name no step).
pub fn resume_run(workflow: &WorkflowName, parked: &[Incoming<'_>]) -> Vec<Option<Outgoing>> {
    let generation = next_generation(parked);
    parked
        .iter()
        .map(|p| resume(workflow, p, generation))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        FailedBody, FailureReason, Workflow,
        protocol::{parked, resume as resume_one},
    };

    #[test]
    fn a_resumed_input_is_the_next_attempt_of_the_next_generation() {
        let flow = Workflow::builder("simple")
            .start(crate::Step::new(
                "s",
                |n: u32, _: crate::StepContext| async move { Ok::<u32, crate::StepError>(n) },
            ))
            .build()
            .unwrap();
        let parked = Incoming {
            routing_key: "simple.run.triggered",
            redelivered: false,
            headers: Headers::new()
                .with(header::RUN_ID, "r1")
                .with(header::TRACEPARENT, "00-ab-cd-01")
                .with(header::PARKED_STEP, "s")
                .with(header::PARKED_ATTEMPT, 3_u32)
                .with(header::PARKED_REASON, "fatal"),
            message_id: Some("parked:m7"),
            body: b"1",
        };
        let message = resume_one(flow.name(), &parked, 2).unwrap();
        let address = Names::default().address(&message.destination);
        assert_eq!(address.exchange, "inqubo.retry");
        assert_eq!(address.routing_key, "simple.s");
        assert_eq!(message.headers.text(header::RUN_ID), Some("r1"));
        assert_eq!(
            message.headers.text(header::TRACEPARENT),
            Some("00-ab-cd-01")
        );
        assert_eq!(message.headers.int(header::RETRY_ATTEMPT), Some(4));
        assert_eq!(message.headers.int(header::RUN_GENERATION), Some(2));
        assert!(!message.headers.contains(header::PARKED_REASON));
        assert_eq!(message.message_id, "resume:g2:m7");
        let mut piece = parked.clone();
        piece.headers.insert(header::PARKED_STEP, "_run");
        assert!(resume_one(flow.name(), &piece, 2).is_none());
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
        let mut parked_copy = input.clone();
        parked_copy.message_id = Some(&parked.message_id);
        parked_copy.headers.extend(&parked.headers);
        let resumed = resume_one(&wf, &parked_copy, 2).unwrap();
        assert_eq!(resumed.message_id, "resume:g2:r1:simple:triggered");
        assert_eq!(resumed.headers.text(header::TRACEPARENT), None);
    }
}
