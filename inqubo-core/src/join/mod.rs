//! The state of joins: which parents of which runs have reported, and when a join fires.
//!
//! A join waits for several parents of the same run. The broker-independent bookkeeping lives
//! here so that every runtime — RabbitMQ, the in-process test harness — decides the same way.
//! A [`JoinBook`] holds the pending joins of one shard; the runtime feeds it [`Piece`]s (a
//! parent's output, or the news that a run failed), persists [`JoinBook::snapshot`] before
//! acknowledging those pieces, and publishes whatever [`JoinDecision`] says.
//!
//! The same machinery tells when a run ends: the *run join* waits for every last step of a
//! workflow, and fires `<workflow>.run.succeeded` with their outputs keyed by step name. It is
//! the one place that decides how a run ends — succeeded, failed or cancelled — so a run (of
//! one generation) ends exactly once, however many duplicates or late pieces arrive.
//!
//! ## Generations: resuming a failed run
//!
//! Every piece carries its run's generation (1, and one more per resume). A failure aborts a
//! join but keeps the outputs it had; a piece of a later generation reopens it, so that a
//! resumed step's output joins its siblings' earlier ones. Pieces of an aborted generation
//! are recorded (a resume may need them) but never fire.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

mod map;
mod memory;
mod snapshot;
mod split;

use map::MapResults;
use memory::Ended;
pub use memory::{MAX_REMEMBERED_RUNS, RunMemory};
pub use snapshot::SnapshotError;

use crate::{
    event::RunFailedBody,
    name::{RunId, StepName},
    protocol::Element,
    workflow::JoinShape,
};

/// `output` as the book keeps it: our own serialisation, so garbage counts as JSON null.
fn raw(output: &[u8]) -> Box<RawValue> {
    RawValue::from_string(String::from_utf8_lossy(output).into_owned())
        .unwrap_or_else(|_| RawValue::NULL.to_owned())
}

/// What a join is waiting to build.
#[derive(Debug, Clone, Copy)]
pub enum JoinTarget<'a> {
    /// The input of a join step, shaped like its input tuple.
    Step(&'a JoinShape),
    /// The end of a run: the outputs of every last step, keyed by name.
    Run(&'a [StepName]),
}

impl JoinTarget<'_> {
    fn needs(&self) -> Vec<&StepName> {
        match self {
            JoinTarget::Step(shape) => {
                let mut steps = Vec::new();
                collect(shape, &mut steps);
                steps
            }
            JoinTarget::Run(leaves) => leaves.iter().collect(),
        }
    }
}

fn collect<'a>(shape: &'a JoinShape, steps: &mut Vec<&'a StepName>) {
    match shape {
        JoinShape::Step(step) => steps.push(step),
        JoinShape::Tuple(parts) => parts.iter().for_each(|p| collect(p, steps)),
    }
}

/// One piece of news for a join.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// A parent succeeded with this output (JSON bytes).
    Output {
        /// The parent.
        parent: StepName,
        /// Its output.
        output: Vec<u8>,
        /// The run generation it belongs to.
        generation: u32,
    },
    /// One element of a map succeeded with this output (JSON bytes). The map's output, for
    /// the join, is the list of every element's output in order, once all have reported.
    Element {
        /// The map step.
        parent: StepName,
        /// Which element, of how many.
        element: Element,
        /// Its output.
        output: Vec<u8>,
        /// The run generation it belongs to.
        generation: u32,
    },
    /// A step upstream failed for good: the join cannot fire in this generation.
    Failed {
        /// What failed.
        failure: RunFailedBody,
        /// The run generation it belongs to.
        generation: u32,
    },
    /// Someone asked to cancel the run (run joins only).
    Cancel {
        /// Why.
        reason: String,
    },
    /// A trigger asks to start the run (run joins only, with unique runs).
    Begin {
        /// Whether this trigger was delivered before: a copy of one already admitted, not a
        /// second trigger.
        again: bool,
    },
}

/// How a run ended at a join.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// The join fired (for the run join: the run succeeded).
    Fired,
    /// A failure aborted it; a later generation may reopen it.
    Aborted,
    /// The run was cancelled.
    Cancelled,
}

impl Ending {
    /// How the run ended, as a word (`succeeded`, `failed`, `cancelled`).
    pub fn as_run_state(self) -> &'static str {
        match self {
            Ending::Fired => "succeeded",
            Ending::Aborted => "failed",
            Ending::Cancelled => "cancelled",
        }
    }
}

/// What to do after adding a piece.
#[derive(Debug, Clone, PartialEq)]
pub enum JoinDecision {
    /// Keep waiting for other parents.
    Wait,
    /// Every parent reported: publish this (the joined input, or the run's outputs), in this
    /// generation.
    Fire {
        /// The joined input, or the run's outputs.
        body: Vec<u8>,
        /// The generation that completed it.
        generation: u32,
    },
    /// The run failed in this generation: publish this failure (once).
    Abort {
        /// What failed.
        failure: RunFailedBody,
        /// The generation that failed.
        generation: u32,
    },
    /// The run is cancelled: publish `run.cancelled` (once).
    Cancel {
        /// Why.
        reason: String,
        /// The generation that was running.
        generation: u32,
    },
    /// A cancel request for a run that had already ended this way: nothing changes.
    Refuse(Ending),
    /// A trigger of a run not known here: start it.
    Admit,
    /// A trigger of a run that exists: start nothing, and say in what state it is.
    Duplicate {
        /// `running`, `succeeded`, `failed` or `cancelled`.
        state: &'static str,
        /// The existing run's generation.
        generation: u32,
    },
    /// The piece changes nothing (a duplicate, or a late piece of an ended generation).
    Ignore,
}

/// The pending joins of one shard, and the runs it recently finished.
///
/// Snapshots carry a version, `(epoch, seq)`: each consumer that takes over a shard starts a
/// new epoch above every snapshot it found, and numbers its snapshots within it. A snapshot
/// published late by a consumer that lost the shard (a retried publish, a requeue when its
/// channel closed) is then older than the new consumer's, whatever order they arrive in, and
/// [`JoinBook::newest`] never picks it.
#[derive(Debug, Default, Clone)]
pub struct JoinBook {
    /// Outputs received per run that has not fired (waiting, or aborted and kept for a resume).
    pending: HashMap<RunId, HashMap<StepName, Box<RawValue>>>,
    /// Per run that has not fired, the results of each map parent's elements, until every
    /// element has reported (the list then moves to `pending` as the map's output).
    maps: HashMap<RunId, HashMap<StepName, MapResults>>,
    /// Runs that succeeded or were cancelled here, oldest first, forgotten after
    /// [`RunMemory::ended`].
    finished: VecDeque<RunId>,
    /// Runs that failed here, oldest first, forgotten after [`RunMemory::failed`].
    failed: VecDeque<RunId>,
    /// How each run in `finished` and `failed` ended.
    ended: HashMap<RunId, Ended>,
    /// The time of the batch being added (milliseconds since the Unix epoch), set by
    /// [`JoinBook::tick`].
    clock: u64,
    /// The generation of pending runs past their first (resumed runs).
    generations: HashMap<RunId, u32>,
    /// The consumer generation that wrote the snapshot.
    epoch: u64,
    /// The snapshot's number within its epoch.
    seq: u64,
}

impl JoinBook {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs waiting for more parents (not counting aborted ones kept for a resume).
    pub fn pending_runs(&self) -> usize {
        self.pending
            .keys()
            .filter(|run| !self.ended.contains_key(*run))
            .count()
    }

    /// Adds `piece` for `run` and says what follows.
    pub fn add(&mut self, run: &RunId, piece: Piece, target: JoinTarget<'_>) -> JoinDecision {
        let ended = self.ended.get(run).copied();
        match (piece, ended) {
            (Piece::Begin { .. }, Some(ended)) => JoinDecision::Duplicate {
                state: ended.how.as_run_state(),
                generation: ended.generation,
            },
            (Piece::Begin { again }, None) => {
                if !self.pending.contains_key(run) {
                    // Known from now on: the run's pieces will fill this in.
                    self.pending.insert(run.clone(), HashMap::new());
                    JoinDecision::Admit
                } else if again {
                    JoinDecision::Ignore
                } else {
                    JoinDecision::Duplicate {
                        state: "running",
                        generation: self.generations.get(run).copied().unwrap_or(1),
                    }
                }
            }
            (Piece::Cancel { .. }, Some(ended)) => JoinDecision::Refuse(ended.how),
            (Piece::Cancel { reason }, None) => {
                let generation = self.generations.get(run).copied().unwrap_or(1);
                self.end(run, Ending::Cancelled, generation);
                self.pending.remove(run);
                self.maps.remove(run);
                JoinDecision::Cancel { reason, generation }
            }
            (
                _,
                Some(Ended {
                    how: Ending::Fired | Ending::Cancelled,
                    ..
                }),
            ) => JoinDecision::Ignore,
            (
                Piece::Failed {
                    failure,
                    generation,
                },
                ended,
            ) => {
                let reopened = ended.is_none_or(|e| generation > e.generation);
                if !reopened {
                    return JoinDecision::Ignore;
                }
                self.end(run, Ending::Aborted, generation);
                JoinDecision::Abort {
                    failure,
                    generation,
                }
            }
            (
                Piece::Output {
                    parent,
                    output,
                    generation,
                },
                ended,
            ) => {
                self.pending
                    .entry(run.clone())
                    .or_default()
                    .insert(parent, raw(&output));
                self.received(run, generation, ended, target)
            }
            (
                Piece::Element {
                    parent,
                    element,
                    output,
                    generation,
                },
                ended,
            ) => {
                let outputs = self.pending.entry(run.clone()).or_default();
                // Once the map's list is complete, a late copy of an element changes nothing.
                if let std::collections::hash_map::Entry::Vacant(slot) =
                    outputs.entry(parent.clone())
                {
                    let maps = self.maps.entry(run.clone()).or_default();
                    let results = maps.entry(parent.clone()).or_insert_with(|| MapResults {
                        size: element.size,
                        results: std::collections::BTreeMap::new(),
                    });
                    if element.index < results.size {
                        results.results.insert(element.index, raw(&output));
                    }
                    if let Some(list) = results.complete() {
                        maps.remove(&parent);
                        if maps.is_empty() {
                            self.maps.remove(run);
                        }
                        slot.insert(list);
                    }
                }
                self.received(run, generation, ended, target)
            }
        }
    }

    /// What follows an output recorded for `run` in `generation`: fire if it completes the
    /// join; nothing if the run's generation already ended.
    fn received(
        &mut self,
        run: &RunId,
        generation: u32,
        ended: Option<Ended>,
        target: JoinTarget<'_>,
    ) -> JoinDecision {
        match ended {
            Some(aborted) if generation <= aborted.generation => JoinDecision::Ignore,
            _ => {
                // A later generation reopens an aborted run (rare: a resume), which leaves
                // the finished list until it ends again.
                if self.ended.remove(run).is_some() {
                    self.failed.retain(|failed| failed != run);
                }
                let current = self.generations.get(run).copied().unwrap_or(1);
                let generation = generation.max(current);
                if generation > 1 {
                    self.generations.insert(run.clone(), generation);
                }
                self.try_fire(run, target, generation)
            }
        }
    }

    fn try_fire(&mut self, run: &RunId, target: JoinTarget<'_>, generation: u32) -> JoinDecision {
        let Some(outputs) = self.pending.get(run) else {
            return JoinDecision::Wait;
        };
        if !target
            .needs()
            .iter()
            .all(|step| outputs.contains_key(*step))
        {
            return JoinDecision::Wait;
        }
        let fired = match target {
            JoinTarget::Step(shape) => {
                let raw: HashMap<StepName, Vec<u8>> = outputs
                    .iter()
                    .map(|(k, v)| (k.clone(), v.get().as_bytes().to_vec()))
                    .collect();
                shape.assemble(&raw)
            }
            JoinTarget::Run(leaves) => {
                let object: serde_json::Map<String, serde_json::Value> = leaves
                    .iter()
                    .filter_map(|leaf| {
                        let value = serde_json::from_str(outputs.get(leaf)?.get()).ok()?;
                        Some((leaf.to_string(), value))
                    })
                    .collect();
                serde_json::to_vec(&object).ok()
            }
        };
        let Some(body) = fired else {
            return JoinDecision::Wait;
        };
        self.pending.remove(run);
        self.maps.remove(run);
        self.end(run, Ending::Fired, generation);
        JoinDecision::Fire { body, generation }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FailureReason;

    fn name(s: &str) -> StepName {
        StepName::new(s).unwrap()
    }
    fn run(s: &str) -> RunId {
        RunId::new(s).unwrap()
    }
    fn output(parent: &str, json: &str) -> Piece {
        output_of(parent, json, 1)
    }
    fn output_of(parent: &str, json: &str, generation: u32) -> Piece {
        Piece::Output {
            parent: name(parent),
            output: json.as_bytes().to_vec(),
            generation,
        }
    }
    fn fire(body: &[u8]) -> JoinDecision {
        JoinDecision::Fire {
            body: body.to_vec(),
            generation: 1,
        }
    }
    fn shape() -> JoinShape {
        JoinShape::Tuple(vec![JoinShape::Step(name("b")), JoinShape::Step(name("c"))])
    }

    #[test]
    fn fires_once_when_every_parent_reported() {
        let shape = shape();
        let mut book = JoinBook::new();
        assert_eq!(
            book.add(&run("r"), output("c", "\"x\""), JoinTarget::Step(&shape)),
            JoinDecision::Wait
        );
        assert_eq!(book.pending_runs(), 1);
        assert_eq!(
            book.add(
                &run("r"),
                output("b", "{\"n\":1}"),
                JoinTarget::Step(&shape)
            ),
            fire(br#"[{"n":1},"x"]"#)
        );
        assert_eq!(book.pending_runs(), 0);
        assert_eq!(
            book.add(&run("r"), output("b", "1"), JoinTarget::Step(&shape)),
            JoinDecision::Ignore
        );
    }

    #[test]
    fn duplicate_parent_pieces_do_not_fire_twice() {
        let shape = shape();
        let mut book = JoinBook::new();
        assert_eq!(
            book.add(&run("r"), output("b", "1"), JoinTarget::Step(&shape)),
            JoinDecision::Wait
        );
        assert_eq!(
            book.add(&run("r"), output("b", "1"), JoinTarget::Step(&shape)),
            JoinDecision::Wait
        );
        assert!(matches!(
            book.add(&run("r"), output("c", "2"), JoinTarget::Step(&shape)),
            JoinDecision::Fire { .. }
        ));
        assert_eq!(
            book.add(&run("r"), output("c", "2"), JoinTarget::Step(&shape)),
            JoinDecision::Ignore
        );
    }

    #[test]
    fn a_failed_parent_aborts_the_join_for_good() {
        let shape = shape();
        let mut book = JoinBook::new();
        book.add(&run("r"), output("b", "1"), JoinTarget::Step(&shape));
        let failure = RunFailedBody {
            step: name("c"),
            error: "boom".into(),
            attempt: 3,
            reason: FailureReason::RetriesExhausted,
        };
        assert_eq!(
            book.add(
                &run("r"),
                Piece::Failed {
                    failure: failure.clone(),
                    generation: 1
                },
                JoinTarget::Step(&shape)
            ),
            JoinDecision::Abort {
                failure: failure.clone(),
                generation: 1
            }
        );
        assert_eq!(
            book.add(&run("r"), output("c", "2"), JoinTarget::Step(&shape)),
            JoinDecision::Ignore
        );
        assert_eq!(
            book.add(
                &run("r"),
                Piece::Failed {
                    failure: failure.clone(),
                    generation: 1
                },
                JoinTarget::Step(&shape)
            ),
            JoinDecision::Ignore
        );
    }

    #[test]
    fn the_run_join_reports_leaf_outputs_by_name() {
        let leaves = [name("x"), name("y")];
        let mut book = JoinBook::new();
        assert_eq!(
            book.add(&run("r"), output("y", "null"), JoinTarget::Run(&leaves)),
            JoinDecision::Wait
        );
        let JoinDecision::Fire { body, .. } =
            book.add(&run("r"), output("x", "[1]"), JoinTarget::Run(&leaves))
        else {
            panic!("should fire");
        };
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value, serde_json::json!({"x": [1], "y": null}));
    }

    #[test]
    fn snapshots_restore_pending_and_finished_runs() {
        let shape = shape();
        let mut book = JoinBook::new();
        book.add(&run("waiting"), output("b", "7"), JoinTarget::Step(&shape));
        book.add(&run("done"), output("b", "1"), JoinTarget::Step(&shape));
        book.add(&run("done"), output("c", "2"), JoinTarget::Step(&shape));
        let mut restored = JoinBook::restore(&book.snapshot()).unwrap();
        assert_eq!(restored.pending_runs(), 1);
        assert_eq!(
            restored.add(&run("done"), output("c", "2"), JoinTarget::Step(&shape)),
            JoinDecision::Ignore
        );
        assert_eq!(
            restored.add(&run("waiting"), output("c", "8"), JoinTarget::Step(&shape)),
            fire(b"[7,8]")
        );
        assert!(JoinBook::restore(b"not json").is_err());
    }

    #[test]
    fn an_aborted_join_keeps_its_outputs_and_a_later_generation_reopens_it() {
        let shape = shape();
        let mut book = JoinBook::new();
        let failure = RunFailedBody {
            step: name("c"),
            error: "boom".into(),
            attempt: 1,
            reason: FailureReason::Fatal,
        };
        book.add(&run("r"), output("b", "1"), JoinTarget::Step(&shape));
        let failed = |generation| Piece::Failed {
            failure: failure.clone(),
            generation,
        };
        assert!(matches!(
            book.add(&run("r"), failed(1), JoinTarget::Step(&shape)),
            JoinDecision::Abort { generation: 1, .. }
        ));
        // A late piece of the aborted generation is kept but fires nothing.
        assert_eq!(
            book.add(&run("r"), output("c", "9"), JoinTarget::Step(&shape)),
            JoinDecision::Ignore
        );
        assert_eq!(
            book.add(&run("r"), failed(1), JoinTarget::Step(&shape)),
            JoinDecision::Ignore
        );
        // The resumed c, generation 2, fires the join with b's earlier output.
        let mut restored = JoinBook::restore(&book.snapshot()).unwrap();
        assert_eq!(
            restored.add(&run("r"), output_of("c", "2", 2), JoinTarget::Step(&shape)),
            JoinDecision::Fire {
                body: b"[1,2]".to_vec(),
                generation: 2
            }
        );
        assert_eq!(
            restored.add(&run("r"), output_of("c", "2", 2), JoinTarget::Step(&shape)),
            JoinDecision::Ignore
        );
    }

    #[test]
    fn a_run_is_cancelled_once_and_an_ended_run_refuses() {
        let leaves = [name("x")];
        let mut book = JoinBook::new();
        let cancel = || Piece::Cancel {
            reason: "no longer needed".into(),
        };
        assert_eq!(
            book.add(&run("r"), cancel(), JoinTarget::Run(&leaves)),
            JoinDecision::Cancel {
                reason: "no longer needed".into(),
                generation: 1
            }
        );
        assert_eq!(
            book.add(&run("r"), cancel(), JoinTarget::Run(&leaves)),
            JoinDecision::Refuse(Ending::Cancelled)
        );
        assert_eq!(
            book.add(&run("r"), output("x", "1"), JoinTarget::Run(&leaves)),
            JoinDecision::Ignore,
            "a cancelled run never succeeds"
        );
        book.add(&run("s"), output("x", "1"), JoinTarget::Run(&leaves));
        assert_eq!(
            book.add(&run("s"), cancel(), JoinTarget::Run(&leaves)),
            JoinDecision::Refuse(Ending::Fired)
        );
    }

    #[test]
    fn a_reopened_run_survives_snapshots_and_ends_once_more() {
        let shape = shape();
        let mut book = JoinBook::new();
        let failure = RunFailedBody {
            step: name("c"),
            error: "boom".into(),
            attempt: 1,
            reason: FailureReason::Fatal,
        };
        book.add(&run("r"), output("b", "1"), JoinTarget::Step(&shape));
        book.add(
            &run("r"),
            Piece::Failed {
                failure,
                generation: 1,
            },
            JoinTarget::Step(&shape),
        );
        // Reopened by generation 2 but not complete: a piece of a third parent would be needed.
        let wide = JoinShape::Tuple(vec![
            JoinShape::Step(name("b")),
            JoinShape::Step(name("c")),
            JoinShape::Step(name("e")),
        ]);
        assert_eq!(
            book.add(&run("r"), output_of("c", "2", 2), JoinTarget::Step(&wide)),
            JoinDecision::Wait
        );
        let mut restored = JoinBook::restore(&book.snapshot()).unwrap();
        assert_eq!(restored.pending_runs(), 1);
        assert_eq!(
            restored.add(&run("r"), output_of("e", "3", 2), JoinTarget::Step(&wide)),
            JoinDecision::Fire {
                body: b"[1,2,3]".to_vec(),
                generation: 2
            }
        );
        let again = JoinBook::restore(&restored.snapshot()).unwrap();
        assert_eq!(again.finished.len(), 1, "listed once");
        assert_eq!(
            again.ended.get(&run("r")),
            Some(&Ended {
                how: Ending::Fired,
                generation: 2,
                at: 0,
            })
        );
    }

    #[test]
    fn a_run_that_succeeded_ignores_a_later_failure_of_its_last_step() {
        // A chain's last step succeeded, its ack was lost, and the redelivered attempt failed
        // differently: the run join has already ended the run, so no second ending follows.
        let leaves = [name("last")];
        let mut book = JoinBook::new();
        assert!(matches!(
            book.add(&run("r"), output("last", "1"), JoinTarget::Run(&leaves)),
            JoinDecision::Fire { generation: 1, .. }
        ));
        let failure = RunFailedBody {
            step: name("last"),
            error: "timed out this time".into(),
            attempt: 1,
            reason: FailureReason::RetriesExhausted,
        };
        assert_eq!(
            book.add(
                &run("r"),
                Piece::Failed {
                    failure,
                    generation: 1
                },
                JoinTarget::Run(&leaves)
            ),
            JoinDecision::Ignore
        );
    }

    #[test]
    fn snapshots_list_first_generation_fired_runs_by_id_only() {
        let leaves = [name("x")];
        let mut book = JoinBook::new();
        book.add(&run("a"), output("x", "1"), JoinTarget::Run(&leaves));
        book.add(
            &run("b"),
            Piece::Cancel {
                reason: "stop".into(),
            },
            JoinTarget::Run(&leaves),
        );
        let snapshot: serde_json::Value = serde_json::from_slice(&book.snapshot()).unwrap();
        assert_eq!(
            snapshot["finished"],
            serde_json::json!([["a", 0], ["b", "cancelled", 1, 0]])
        );
    }

    #[test]
    fn old_snapshots_read_as_runs_that_fired() {
        let old = br#"{"pending":{},"finished":["r"],"epoch":3,"seq":9}"#;
        let mut book = JoinBook::restore(old).unwrap();
        let leaves = [name("x")];
        assert_eq!(
            book.add(&run("r"), output("x", "1"), JoinTarget::Run(&leaves)),
            JoinDecision::Ignore
        );
    }

    #[test]
    fn a_late_duplicate_is_known_for_as_long_as_the_memory_lasts() {
        const HOUR: u64 = 3_600_000;
        let shape = shape();
        let target = JoinTarget::Step(&shape);
        let memory = RunMemory::default();
        let t0 = 1_800_000_000_000;
        let mut book = JoinBook::new();
        book.tick(t0, memory);
        book.add(&run("r"), output("b", "1"), target);
        assert!(matches!(
            book.add(&run("r"), output("c", "2"), target),
            JoinDecision::Fire { .. }
        ));
        let failure = RunFailedBody {
            step: name("c"),
            error: "boom".into(),
            attempt: 1,
            reason: FailureReason::Fatal,
        };
        book.add(&run("f"), output("b", "1"), target);
        book.add(
            &run("f"),
            Piece::Failed {
                failure,
                generation: 1,
            },
            target,
        );

        // An hour later — a piece held up by a consumer timeout — and a day later, less a
        // minute: still known, whatever happened in between.
        for later in [HOUR, 24 * HOUR - 60_000] {
            book.tick(t0 + later, memory);
            assert_eq!(
                book.add(&run("r"), output("c", "2"), target),
                JoinDecision::Ignore
            );
        }
        // Past the memory, the run is forgotten; a failed run's outputs are kept for a resume
        // for a week.
        book.tick(t0 + 24 * HOUR + 60_000, memory);
        assert_eq!(book.finished.len(), 0);
        assert_eq!(book.failed.len(), 1);
        assert!(matches!(
            book.add(&run("f"), output_of("c", "3", 2), target),
            JoinDecision::Fire { .. }
        ));
        // The times survive a snapshot.
        let restored = JoinBook::restore(&book.snapshot_at_version()).unwrap();
        assert_eq!(
            restored.ended.get(&run("f")).map(|e| e.at),
            Some(t0 + 24 * HOUR + 60_000)
        );
    }

    #[test]
    fn runs_that_ended_before_the_book_had_a_clock_are_stamped_with_its_first_tick() {
        let old = br#"{"pending":{},"finished":["r", ["f", "aborted", 1]],"epoch":3,"seq":9}"#;
        let mut book = JoinBook::restore(old).unwrap();
        book.tick(5_000, RunMemory::default());
        assert!(book.ended.values().all(|e| e.at == 5_000));
        assert_eq!((book.finished.len(), book.failed.len()), (1, 1));
    }

    #[test]
    fn a_late_snapshot_of_a_previous_consumer_never_wins() {
        let run = RunId::new("r1").unwrap();
        let leaves = [StepName::new("x").unwrap(), StepName::new("y").unwrap()];
        let piece = |parent: &str| Piece::Output {
            parent: StepName::new(parent).unwrap(),
            output: b"1".to_vec(),
            generation: 1,
        };
        // The first consumer's last snapshot knows nothing of run r1.
        let (mut first, _) = JoinBook::newest([]);
        let stale = first.snapshot();
        // The next consumer took over from it and recorded x's piece.
        let (mut second, _) = JoinBook::newest([stale.as_slice()]);
        second.add(&run, piece("x"), JoinTarget::Run(&leaves));
        let current = second.snapshot();
        // The stale snapshot lands again after the current one (a retried publish): the
        // consumer after them still starts from the current one, and y completes the run.
        let (mut third, unreadable) =
            JoinBook::newest([current.as_slice(), stale.as_slice(), b"garbage".as_slice()]);
        assert_eq!(unreadable, 1);
        assert_eq!(third.pending_runs(), 1);
        assert!(third.version() > second.version());
        assert!(matches!(
            third.add(&run, piece("y"), JoinTarget::Run(&leaves)),
            JoinDecision::Fire { .. }
        ));
    }

    fn element(index: u32, size: u32, json: &str, generation: u32) -> Piece {
        Piece::Element {
            parent: name("m"),
            element: Element { index, size },
            output: json.as_bytes().to_vec(),
            generation,
        }
    }

    #[test]
    fn a_map_fires_once_every_element_reported_with_results_in_order() {
        let shape = JoinShape::Step(name("m"));
        let target = JoinTarget::Step(&shape);
        let mut book = JoinBook::new();
        let r = run("r");
        assert_eq!(
            book.add(&r, element(2, 3, "\"c\"", 1), target),
            JoinDecision::Wait
        );
        assert_eq!(
            book.add(&r, element(0, 3, "\"a\"", 1), target),
            JoinDecision::Wait
        );
        // A redelivered element counts once.
        assert_eq!(
            book.add(&r, element(0, 3, "\"a\"", 1), target),
            JoinDecision::Wait
        );
        // An index past the list is not an element of it.
        assert_eq!(
            book.add(&r, element(7, 3, "\"x\"", 1), target),
            JoinDecision::Wait
        );
        assert_eq!(
            book.add(&r, element(1, 3, "\"b\"", 1), target),
            fire(br#"["a","b","c"]"#)
        );
        assert_eq!(
            book.add(&r, element(1, 3, "\"b\"", 1), target),
            JoinDecision::Ignore
        );
        assert_eq!(book.pending_runs(), 0);
        assert!(book.maps.is_empty(), "nothing of the map is left");
    }

    #[test]
    fn a_resumed_element_completes_a_map_its_failure_aborted() {
        let shape = JoinShape::Step(name("m"));
        let target = JoinTarget::Step(&shape);
        let mut book = JoinBook::new();
        let r = run("r");
        book.add(&r, element(0, 2, "1", 1), target);
        let failure = RunFailedBody {
            step: name("m"),
            error: "boom".into(),
            attempt: 1,
            reason: FailureReason::Fatal,
        };
        assert!(matches!(
            book.add(
                &r,
                Piece::Failed {
                    failure,
                    generation: 1
                },
                target
            ),
            JoinDecision::Abort { .. }
        ));
        // A late element of the failed generation is kept, but fires nothing.
        assert_eq!(
            book.add(&r, element(1, 2, "2", 1), target),
            JoinDecision::Ignore
        );
        let mut rebuilt = JoinBook::restore(&book.snapshot()).unwrap();
        assert_eq!(
            rebuilt.content(),
            book.content(),
            "map results survive a snapshot"
        );
        assert_eq!(
            rebuilt.add(&r, element(1, 2, "2", 2), target),
            JoinDecision::Fire {
                body: b"[1,2]".to_vec(),
                generation: 2
            }
        );
    }
}
