//! The rules for a piece arriving at a join shard: add it to the book, publish what fires.

use crate::{
    engine::{Effects, Engine},
    event::{
        EventKind, FailedBody, FailureReason, RunCancelledBody, RunDuplicateBody, RunFailedBody,
    },
    join::{JoinBook, JoinDecision, JoinTarget, Piece},
    name::StepName,
    protocol::{self, CancelReply, Incoming, Outgoing, RUN_JOIN, header},
};

impl Engine {
    /// What `join` is waiting to build: a join step's input, or (for [`RUN_JOIN`]) the run's
    /// end. `None` if the workflow has no such join.
    fn join_target(&self, join: &str) -> Option<JoinTarget<'_>> {
        if join == RUN_JOIN {
            return Some(JoinTarget::Run(&self.leaves));
        }
        self.workflow
            .step(join)
            .and_then(|step| step.join())
            .map(JoinTarget::Step)
    }

    /// Adds the piece `incoming` to `book`, the state of one shard of `join`, and says what to
    /// publish: the join step's input when it fires; for the run join, the run's one terminal
    /// event (`run.succeeded`, `run.failed` or `run.cancelled`), the answer to a cancel
    /// request, and for a trigger either the first steps' inputs (a new run) or
    /// `run.duplicate` (a known one); nothing while it waits or for a duplicate piece. A piece that cannot be read is
    /// parked with its reason.
    ///
    /// The driver publishes the effects of a batch of pieces, then the book's
    /// [`join_snapshot`](Engine::join_snapshot), and only then acknowledges the pieces.
    pub fn join_piece(
        &self,
        join: &str,
        book: &mut JoinBook,
        incoming: &Incoming<'_>,
        trace: &str,
    ) -> Effects {
        let piece = match self.read_piece(join, incoming) {
            Ok(piece) => piece,
            Err(error) => return self.park_piece(join, incoming, error),
        };
        let Some(target) = self.join_target(join) else {
            return self.park_piece(
                join,
                incoming,
                format!("workflow `{}` has no join `{join}`", self.workflow.name()),
            );
        };
        let Ok(run_id) = incoming.run_id() else {
            return Effects::default();
        };
        let workflow = self.workflow.name();
        let reply_to = incoming.headers.text(header::REPLY_TO);
        let mut publish = Vec::new();
        match book.add(&run_id, piece, target) {
            JoinDecision::Fire { body, generation } if join == RUN_JOIN => {
                publish.push(protocol::run_event(
                    workflow,
                    &run_id,
                    generation,
                    EventKind::RunSucceeded,
                    body,
                ));
            }
            JoinDecision::Fire { body, generation } => {
                if let Ok(step) = StepName::new(join) {
                    publish.push(protocol::joined_input(
                        workflow, &step, &run_id, generation, body,
                    ));
                }
            }
            JoinDecision::Abort {
                failure,
                generation,
            } if join == RUN_JOIN => {
                publish.push(protocol::run_failed(
                    workflow, &run_id, generation, &failure,
                ));
            }
            JoinDecision::Cancel { reason, generation } => {
                let body = protocol::json(&RunCancelledBody { reason });
                publish.push(protocol::run_event(
                    workflow,
                    &run_id,
                    generation,
                    EventKind::RunCancelled,
                    body,
                ));
                if let Some(queue) = reply_to {
                    publish.push(protocol::cancel_reply(
                        queue,
                        &run_id,
                        &CancelReply::Cancelled,
                    ));
                }
            }
            JoinDecision::Admit => {
                // The gate is invisible in the run's trace: the first steps' parent is the
                // trigger's span.
                let trigger_trace = incoming.traceparent().unwrap_or(trace);
                let trigger_id = incoming
                    .message_id
                    .map_or_else(|| format!("{run_id}:{workflow}:triggered"), str::to_owned);
                for root in self.workflow.roots() {
                    let input = protocol::admitted(
                        workflow,
                        root.name(),
                        &run_id,
                        incoming.body.to_vec(),
                        &trigger_id,
                    );
                    publish.push(input.with_trace(trigger_trace));
                }
            }
            JoinDecision::Duplicate { state, generation } => {
                let body = protocol::json(&RunDuplicateBody {
                    state: state.to_owned(),
                });
                publish.push(protocol::run_event(
                    workflow,
                    &run_id,
                    generation,
                    EventKind::RunDuplicate,
                    body,
                ));
            }
            JoinDecision::Refuse(ending) => {
                if let Some(queue) = reply_to {
                    let ended = ending.as_run_state().to_owned();
                    publish.push(protocol::cancel_reply(
                        queue,
                        &run_id,
                        &CancelReply::Refused { ended },
                    ));
                }
            }
            _ => {}
        }
        let traced = publish.into_iter().map(|m| {
            if m.headers.contains(header::TRACEPARENT) {
                m
            } else {
                m.with_trace(trace)
            }
        });
        Effects::publish(traced.collect())
    }

    /// The snapshot of `book`, the state of shard `shard` of `join`, to publish to the
    /// shard's state queue before the pieces it holds are acknowledged.
    pub fn join_snapshot(&self, join: &str, shard: u32, book: &mut JoinBook) -> Outgoing {
        protocol::join_snapshot(self.workflow.name(), join, shard, book.snapshot())
    }

    fn read_piece(&self, join: &str, incoming: &Incoming<'_>) -> Result<Piece, String> {
        incoming.run_id().map_err(|e| e.to_string())?;
        let generation = incoming.generation();
        if incoming.headers.contains(header::JOIN_CANCEL) {
            if join != RUN_JOIN {
                return Err(format!(
                    "a cancel request sent to join `{join}`, not the run join"
                ));
            }
            let body: RunCancelledBody = serde_json::from_slice(incoming.body)
                .map_err(|e| format!("cancel request is unreadable: {e}"))?;
            return Ok(Piece::Cancel {
                reason: body.reason,
            });
        }
        if incoming.headers.contains(header::JOIN_BEGIN) {
            if join != RUN_JOIN {
                return Err(format!("a trigger sent to join `{join}`, not the run join"));
            }
            let again =
                incoming.redelivered || incoming.headers.contains(header::TRIGGER_REDELIVERED);
            return Ok(Piece::Begin { again });
        }
        if incoming.headers.contains(header::JOIN_FAILED) {
            return serde_json::from_slice::<RunFailedBody>(incoming.body)
                .map(|failure| Piece::Failed {
                    failure,
                    generation,
                })
                .map_err(|e| format!("failure piece for join `{join}` is unreadable: {e}"));
        }
        let parent = incoming
            .headers
            .text(header::JOIN_PARENT)
            .ok_or_else(|| format!("join piece without a `{}` header", header::JOIN_PARENT))?;
        let parent = StepName::new(parent)
            .map_err(|e| format!("invalid `{}` header: {e}", header::JOIN_PARENT))?;
        Ok(Piece::Output {
            parent,
            output: incoming.body.to_vec(),
            generation,
        })
    }

    /// A piece that cannot be read goes to the parked queue with why; it cannot tell a run
    /// anything, so nothing else follows.
    fn park_piece(&self, join: &str, incoming: &Incoming<'_>, error: String) -> Effects {
        let failure = FailedBody {
            error,
            attempt: 0,
            reason: FailureReason::Undecodable,
        };
        // Its `parked-step` is the join: a join step's name, or the run join's reserved name.
        Effects {
            publish: vec![protocol::parked(
                self.workflow.name(),
                join,
                incoming,
                &failure,
            )],
            failure: Some(failure),
        }
    }
}
