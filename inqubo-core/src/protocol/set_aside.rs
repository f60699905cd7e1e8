//! Where an input goes when it is not run, or not run now: parked for good, moved to the
//! workflow's redelivered queue, sent round its own queue with a count, or put back unstarted.
//! Each keeps the delivery's body and headers (see [`Outgoing::inherit_headers`]).

use std::time::Duration;

use crate::{
    event::FailedBody,
    name::{StepName, WorkflowName},
    protocol::{
        Destination, Outgoing,
        header::{self, Headers},
    },
};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        FailureReason,
        protocol::{Incoming, Names},
    };

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
