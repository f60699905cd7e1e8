//! The messages of the join layer: a trigger on its way to be admitted and the admitted
//! input, parents' pieces, a join step's assembled input, and the shards' journal records.

use std::time::Duration;

use crate::{
    name::{RunId, StepName, WorkflowName},
    protocol::{
        Destination, Names, Outgoing,
        header::{self, Headers},
        outgoing::{generation_suffix, run_headers},
    },
};

/// A trigger, on its way from the first step's queue to the run join, which decides whether
/// it starts a new run (unique runs). It keeps every header the trigger came with, and says
/// whether the trigger was delivered before (its runner may have died after sending this
/// once), so that the run join does not take the copy for a second trigger.
pub fn run_begin(
    workflow: &WorkflowName,
    run_id: &RunId,
    trigger: &super::Incoming<'_>,
) -> Outgoing {
    let mut headers = Headers::new().with(header::JOIN_BEGIN, true);
    // Delivered before: redelivered now, or moved to the redelivered queue after a delivery.
    if trigger.redelivered || trigger.headers.contains(header::REDELIVERED_STEP) {
        headers.insert(header::TRIGGER_REDELIVERED, true);
    }
    Outgoing {
        destination: Destination::Join {
            workflow: workflow.clone(),
            join: super::RUN_JOIN.to_owned(),
            slot: Names::join_slot(run_id.as_str()),
        },
        body: trigger.body.to_vec(),
        headers,
        inherit_headers: true,
        // The trigger's own: the first steps' inputs keep it (parked copies, replays).
        message_id: trigger
            .message_id
            .map_or_else(|| format!("{run_id}:{workflow}:triggered"), str::to_owned),
        mandatory: true,
    }
}

/// A new run's input for its first step `step`, from the run join that admitted it; it
/// carries the trigger's `message_id`.
pub fn admitted(
    workflow: &WorkflowName,
    step: &StepName,
    run_id: &RunId,
    input: Vec<u8>,
    message_id: &str,
) -> Outgoing {
    Outgoing {
        destination: Destination::Step {
            workflow: workflow.clone(),
            step: step.clone(),
            delay: Duration::ZERO,
        },
        body: input,
        headers: run_headers(run_id, 1).with(header::RUN_ADMITTED, true),
        inherit_headers: false,
        message_id: message_id.to_owned(),
        mandatory: true,
    }
}

/// A parent's output (or a run's failure) bound for the shard of `join` that owns `run_id`.
pub fn join_piece(
    workflow: &WorkflowName,
    join: &str,
    run_id: &RunId,
    generation: u32,
    from: &StepName,
    body: Vec<u8>,
    failed: bool,
) -> Outgoing {
    let mut headers = run_headers(run_id, generation).with(header::JOIN_PARENT, from.as_str());
    if failed {
        headers.insert(header::JOIN_FAILED, true);
    }
    let kind = if failed { "failed" } else { "piece" };
    Outgoing {
        destination: Destination::Join {
            workflow: workflow.clone(),
            join: join.to_owned(),
            slot: Names::join_slot(run_id.as_str()),
        },
        body,
        headers,
        inherit_headers: false,
        message_id: format!(
            "{run_id}:{workflow}:{from}:{kind}:{join}{}",
            generation_suffix(generation)
        ),
        mandatory: true,
    }
}

/// A piece (or cancel request) `incoming` that reached a shard of `join` that does not own its
/// run, sent on by slot to the shard that does, marked `join-forwarded`.
pub fn forwarded_piece(
    workflow: &WorkflowName,
    join: &str,
    run_id: &RunId,
    incoming: &super::Incoming<'_>,
) -> Outgoing {
    Outgoing {
        destination: Destination::Join {
            workflow: workflow.clone(),
            join: join.to_owned(),
            slot: Names::join_slot(run_id.as_str()),
        },
        body: incoming.body.to_vec(),
        headers: Headers::new().with(header::JOIN_FORWARDED, true),
        inherit_headers: true,
        message_id: incoming.message_id.map_or_else(
            || format!("{run_id}:{workflow}:{join}:forwarded"),
            str::to_owned,
        ),
        mandatory: true,
    }
}

/// The input of `child` (a plain child of attempt `id`'s step) in the lane of `id`'s run's
/// class, through the retry exchange: a prioritized run's steps never wait in the `normal`
/// queue.
pub fn lane_input(id: &super::AttemptId, child: &StepName, output: Vec<u8>) -> Outgoing {
    let workflow = &id.workflow;
    let run_id = &id.run_id;
    Outgoing {
        destination: Destination::Step {
            workflow: workflow.clone(),
            step: child.clone(),
            delay: Duration::ZERO,
        },
        body: output,
        headers: run_headers(run_id, id.generation),
        inherit_headers: false,
        message_id: format!(
            "{run_id}:{workflow}:{child}:input{}",
            generation_suffix(id.generation)
        ),
        mandatory: true,
    }
    .with_priority(id.priority)
}

/// A join step's assembled input, bound for its queue.
pub fn joined_input(
    workflow: &WorkflowName,
    step: &StepName,
    run_id: &RunId,
    generation: u32,
    input: Vec<u8>,
) -> Outgoing {
    Outgoing {
        destination: Destination::Step {
            workflow: workflow.clone(),
            step: step.clone(),
            delay: Duration::ZERO,
        },
        body: input,
        headers: run_headers(run_id, generation),
        inherit_headers: false,
        message_id: format!(
            "{run_id}:{workflow}:{step}:joined{}",
            generation_suffix(generation)
        ),
        mandatory: true,
    }
}

/// A record of the journal of shard `shard` of `join`: the pieces of one batch, or one part of
/// a snapshot (see [`journal`](crate::journal)).
pub fn journal_record(
    workflow: &WorkflowName,
    join: &str,
    shard: u32,
    kind: crate::journal::RecordKind,
    version: (u64, u64),
    body: Vec<u8>,
) -> Outgoing {
    let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let mut headers = Headers::new()
        .with(header::JOURNAL_EPOCH, int(version.0))
        .with(header::JOURNAL_SEQ, int(version.1));
    let id = match kind {
        crate::journal::RecordKind::Batch => {
            headers.insert(header::JOURNAL_KIND, "batch");
            format!(
                "journal:{workflow}.{join}.{shard}:{}.{}",
                version.0, version.1
            )
        }
        crate::journal::RecordKind::Snapshot { part, parts } => {
            headers.insert(header::JOURNAL_KIND, "snapshot");
            headers.insert(header::JOURNAL_PART, part);
            headers.insert(header::JOURNAL_PARTS, parts);
            format!(
                "journal:{workflow}.{join}.{shard}:{}.{}:snapshot:{part}",
                version.0, version.1
            )
        }
    };
    Outgoing {
        destination: Destination::JoinJournal {
            workflow: workflow.clone(),
            join: join.to_owned(),
            shard,
        },
        body,
        headers,
        inherit_headers: false,
        message_id: id,
        mandatory: true,
    }
}
