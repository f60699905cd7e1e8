//! `docs/protocol.md` is the contract: its JSON samples and names must be what the code emits.

use std::{collections::HashMap, time::Duration};

use inqubo_core::{
    AttemptOutcome, EventKind, FailedBody, FailureReason, RoutingKey, StartedBody, StepName,
    WorkflowName, protocol::header,
};
use serde_json::Value;

fn protocol_doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
    std::fs::read_to_string(path).expect("docs/protocol.md is readable")
}

/// The ```json blocks that follow `<!-- golden: NAME -->` markers.
fn golden_samples(doc: &str) -> HashMap<String, Value> {
    let mut samples = HashMap::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .trim()
            .strip_prefix("<!-- golden: ")
            .and_then(|rest| rest.strip_suffix(" -->"))
        else {
            continue;
        };
        let fence = lines.next().expect("a fence follows the marker");
        assert_eq!(
            fence.trim(),
            "```json",
            "golden {name} must be a json block"
        );
        let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        let value = serde_json::from_str(&body.join("\n"))
            .unwrap_or_else(|e| panic!("golden {name} is not JSON: {e}"));
        samples.insert(name.to_owned(), value);
    }
    samples
}

#[test]
fn golden_event_bodies_match_what_runners_publish() {
    let samples = golden_samples(&protocol_doc());

    let started = serde_json::to_value(StartedBody { attempt: 1 }).unwrap();
    assert_eq!(samples["started"], started);

    let retry = AttemptOutcome::Retry {
        error: "failing on purpose (1 of 1)".into(),
        delay: Duration::from_millis(1000),
    };
    let retrying = serde_json::to_value(retry.retrying_body(1).unwrap()).unwrap();
    assert_eq!(samples["retrying"], retrying);

    let failed = serde_json::to_value(FailedBody {
        error: "connection refused".into(),
        attempt: 4,
        reason: FailureReason::RetriesExhausted,
    })
    .unwrap();
    assert_eq!(samples["failed"], failed);
    let run_failed = serde_json::to_value(inqubo_core::RunFailedBody {
        step: StepName::new("process_data").unwrap(),
        error: "connection refused".into(),
        attempt: 4,
        reason: FailureReason::RetriesExhausted,
    })
    .unwrap();
    assert_eq!(samples["run_failed"], run_failed);
    let skipped = serde_json::to_value(inqubo_core::SkippedBody {
        attempt: 1,
        reason: FailureReason::RunFailed,
    })
    .unwrap();
    assert_eq!(samples["skipped"], skipped);
    let cancelled = serde_json::to_value(inqubo_core::RunCancelledBody {
        reason: "customer withdrew the order".into(),
    })
    .unwrap();
    assert_eq!(samples["run_cancelled"], cancelled);
    let refused = serde_json::to_value(inqubo_core::protocol::CancelReply::Refused {
        ended: "succeeded".into(),
    })
    .unwrap();
    assert_eq!(samples["cancel_refused"], refused);
    let duplicate = serde_json::to_value(inqubo_core::RunDuplicateBody {
        state: "running".into(),
    })
    .unwrap();
    assert_eq!(samples["run_duplicate"], duplicate);
    assert_eq!(samples.len(), 8, "every golden sample is checked");
}

#[test]
fn every_header_and_failure_reason_is_documented() {
    let doc = protocol_doc();
    for name in [
        header::RUN_ID,
        header::ATTEMPT,
        header::RETRY_ATTEMPT,
        header::PARKED_REASON,
        header::PARKED_ERROR,
        header::PARKED_STEP,
        header::PARKED_ROUTING_KEY,
        header::PARKED_ATTEMPT,
        header::REDELIVERY_COUNT,
        header::JOIN_PARENT,
        header::JOIN_FAILED,
        header::WORKFLOW,
        header::TRACEPARENT,
        header::RUN_GENERATION,
        header::JOIN_CANCEL,
        header::REPLY_TO,
        header::JOIN_BEGIN,
        header::TRIGGER_REDELIVERED,
        header::RUN_ADMITTED,
        header::JOURNAL_KIND,
        header::JOURNAL_EPOCH,
        header::JOURNAL_SEQ,
        header::JOURNAL_TIME,
        header::JOURNAL_PART,
        header::JOURNAL_PARTS,
    ] {
        assert!(
            doc.contains(&format!("| `{name}` |")),
            "header {name} missing from the table"
        );
    }
    for reason in [
        FailureReason::RetriesExhausted,
        FailureReason::Fatal,
        FailureReason::Undecodable,
        FailureReason::Unroutable,
        FailureReason::RedeliveryLimit,
        FailureReason::TooLarge,
        FailureReason::RunFailed,
        FailureReason::RunCancelled,
    ] {
        assert!(
            doc.contains(&format!("| `{reason}` |")),
            "reason {reason} missing"
        );
    }
}

#[test]
fn documented_routing_keys_are_the_ones_built() {
    let doc = protocol_doc();
    let wf = WorkflowName::new("simple").unwrap();
    let step = StepName::new("process_data").unwrap();
    assert!(doc.contains(
        &format!("`{}`", RoutingKey::run_triggered(&wf).as_str().replace("simple", "<workflow>"))
    ));
    for kind in [
        EventKind::Started,
        EventKind::Succeeded,
        EventKind::Retrying,
        EventKind::Failed,
        EventKind::Skipped,
    ] {
        assert!(
            doc.contains(&format!("| `{kind}` |")),
            "event {kind} missing"
        );
        let key = RoutingKey::step_event(&wf, &step, kind);
        assert_eq!(key.as_str(), format!("simple.step.process_data.{kind}"));
    }
    assert!(doc.contains("`<workflow>.step.<step>.<event>`"));
    for kind in [
        EventKind::RunSucceeded,
        EventKind::RunFailed,
        EventKind::RunCancelled,
        EventKind::RunResumed,
        EventKind::RunDuplicate,
    ] {
        assert!(
            doc.contains(&format!("| `{kind}` |")),
            "run event {kind} missing"
        );
        assert_eq!(
            RoutingKey::run_event(&wf, kind).as_str(),
            format!("simple.run.{kind}")
        );
    }
}
