//! The rules for a piece arriving at a join shard: add it to the book, publish what fires.

use crate::{
    engine::{Effects, Engine},
    event::{
        EventKind, FailedBody, FailureReason, RunCancelledBody, RunDuplicateBody, RunFailedBody,
    },
    join::{JoinBook, JoinDecision, JoinTarget, Piece},
    journal::{self, RecordKind},
    name::{RunId, StepName},
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
    /// `run.duplicate` (a known one); nothing while it waits or for a duplicate piece. A
    /// piece that cannot be read is parked with its reason.
    ///
    /// This is [`read_join_piece`](Engine::read_join_piece) then
    /// [`apply_join_piece`](Engine::apply_join_piece); a driver that journals its batches
    /// calls the two, to record the pieces it applied.
    pub fn join_piece(
        &self,
        join: &str,
        book: &mut JoinBook,
        incoming: &Incoming<'_>,
        trace: &str,
    ) -> Effects {
        match self.read_join_piece(join, incoming) {
            Ok((run_id, piece)) => {
                self.apply_join_piece(join, book, &run_id, piece, incoming, trace)
            }
            Err(effects) => effects,
        }
    }

    /// Reads the piece `incoming` for `join`: its run and what it says. A piece that cannot be
    /// read, or names no join of the workflow, gives the effects that park it instead.
    pub fn read_join_piece(
        &self,
        join: &str,
        incoming: &Incoming<'_>,
    ) -> Result<(RunId, Piece), Effects> {
        let piece = match self.read_piece(join, incoming) {
            Ok(piece) => piece,
            Err(error) => return Err(self.park_piece(join, incoming, error)),
        };
        if self.join_target(join).is_none() {
            return Err(self.park_piece(
                join,
                incoming,
                format!("workflow `{}` has no join `{join}`", self.workflow.name()),
            ));
        }
        let run_id = incoming
            .run_id()
            .map_err(|error| self.park_piece(join, incoming, error.to_string()))?;
        Ok((run_id, piece))
    }

    /// What to do with a piece that reached a shard of `join` that does not own its run (it
    /// was sent under a former shard count, by a client that addresses `run % 4` say): send it
    /// on to the shard that owns the run; if it was sent on once already (runners disagree
    /// on the shard count), park it instead of sending it round again.
    pub fn misrouted_join_piece(&self, join: &str, incoming: &Incoming<'_>) -> Effects {
        if incoming.headers.contains(header::JOIN_FORWARDED) {
            return self.park_piece(
                join,
                incoming,
                "a join piece sent on to the shard owning its run reached another shard; \
                 runners disagree on how many shards the join has"
                    .to_owned(),
            );
        }
        match incoming.run_id() {
            Ok(run_id) => Effects::publish(vec![protocol::forwarded_piece(
                self.workflow.name(),
                join,
                &run_id,
                incoming,
            )]),
            Err(error) => self.park_piece(join, incoming, error.to_string()),
        }
    }

    /// Replays a journaled piece into `book` (a new owner rebuilding a shard): the book
    /// changes as it did when the piece first came; nothing is published.
    pub fn replay_join_piece(&self, join: &str, book: &mut JoinBook, run_id: &RunId, piece: Piece) {
        if let Some(target) = self.join_target(join) {
            book.add(run_id, piece, target);
        }
    }

    /// Adds `piece` of run `run_id`, read from `incoming`, to `book`, and says what to publish
    /// (see [`join_piece`](Engine::join_piece)).
    ///
    /// The driver publishes the effects of a batch of pieces, then the batch's journal record
    /// ([`join_record`](Engine::join_record)), and only then acknowledges the pieces.
    pub fn apply_join_piece(
        &self,
        join: &str,
        book: &mut JoinBook,
        run_id: &RunId,
        piece: Piece,
        incoming: &Incoming<'_>,
        trace: &str,
    ) -> Effects {
        let Some(target) = self.join_target(join) else {
            return Effects::default();
        };
        let run_id = run_id.clone();
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
                    publish.push(
                        protocol::joined_input(workflow, &step, &run_id, generation, body)
                            .with_priority(self.priority_of(incoming)),
                    );
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
                    )
                    .with_priority(self.priority_of(incoming));
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

    /// Starts a batch at `now_ms` (milliseconds since the Unix epoch): the book forgets the
    /// runs that ended longer ago than [`Limits::run_memory`](crate::engine::Limits) says.
    /// A driver calls it before the batch's pieces, and a replay before each record's.
    pub fn join_tick(&self, book: &mut JoinBook, now_ms: u64) {
        book.tick(now_ms, self.limits.run_memory);
    }

    /// The journal record of a batch: `pieces`, applied to `book` (the state of shard `shard`
    /// of `join`) in this order. Numbers the batch in the book's version.
    pub fn join_record(
        &self,
        join: &str,
        shard: u32,
        book: &mut JoinBook,
        pieces: &[(RunId, Piece)],
    ) -> Outgoing {
        book.next_batch();
        protocol::journal_record(
            self.workflow.name(),
            join,
            shard,
            RecordKind::Batch,
            book.version(),
            journal::batch_body(pieces),
        )
        .with_time(book.clock())
    }

    /// A snapshot of `book` for the shard's journal, in parts; once all are confirmed, the
    /// records before it can go.
    pub fn join_snapshot(&self, join: &str, shard: u32, book: &JoinBook) -> Vec<Outgoing> {
        let bytes = book.snapshot_at_version();
        let parts = journal::snapshot_parts(&bytes);
        let count = u32::try_from(parts.len()).unwrap_or(u32::MAX);
        parts
            .iter()
            .zip(0..)
            .map(|(part, index)| {
                protocol::journal_record(
                    self.workflow.name(),
                    join,
                    shard,
                    RecordKind::Snapshot {
                        part: index,
                        parts: count,
                    },
                    book.version(),
                    part.to_vec(),
                )
            })
            .collect()
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
        if let Some(element) = incoming.element() {
            return Ok(Piece::Element {
                parent,
                element,
                output: incoming.body.to_vec(),
                generation,
            });
        }
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
            fan_out: None,
        }
    }
}
