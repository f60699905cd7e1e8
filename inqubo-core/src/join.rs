//! The state of joins: which parents of which runs have reported, and when a join fires.
//!
//! A join waits for several parents of the same run. The broker-independent bookkeeping lives
//! here so that every runtime — RabbitMQ, the in-process test harness — decides the same way.
//! A [`JoinBook`] holds the pending joins of one shard; the runtime feeds it [`Piece`]s (a
//! parent's output, or the news that a run failed), persists [`JoinBook::snapshot`] before
//! acknowledging those pieces, and publishes whatever [`JoinDecision`] says.
//!
//! The same machinery tells when a run ends: the *run join* waits for every last step of a
//! workflow, and fires `<workflow>.run.succeeded` with their outputs keyed by step name.

use std::collections::{HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{
    event::RunFailedBody,
    name::{RunId, StepName},
    workflow::JoinShape,
};

/// How many finished runs a book remembers, to drop late duplicate pieces.
pub const REMEMBERED_FINISHED_RUNS: usize = 10_000;

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
    },
    /// A step upstream failed for good: the join can never fire.
    Failed(RunFailedBody),
}

/// What to do after adding a piece.
#[derive(Debug, Clone, PartialEq)]
pub enum JoinDecision {
    /// Keep waiting for other parents.
    Wait,
    /// Every parent reported: publish this (the joined input, or the run's outputs).
    Fire(Vec<u8>),
    /// The run failed: publish this failure (once), and forget the run.
    Abort(RunFailedBody),
    /// The run already finished (a duplicate or late piece): nothing to do.
    Ignore,
}

/// The pending joins of one shard, and the runs it recently finished.
///
/// Snapshots carry a version, `(epoch, seq)`: each consumer that takes over a shard starts a
/// new epoch above every snapshot it found, and numbers its snapshots within it. A snapshot
/// published late by a consumer that lost the shard (a retried publish, a requeue when its
/// channel closed) is then older than the new consumer's, whatever order they arrive in, and
/// [`JoinBook::newest`] never picks it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct JoinBook {
    pending: HashMap<RunId, HashMap<StepName, Box<RawValue>>>,
    finished: VecDeque<RunId>,
    #[serde(skip)]
    finished_set: HashSet<RunId>,
    /// The consumer generation that wrote the snapshot.
    #[serde(default)]
    epoch: u64,
    /// The snapshot's number within its epoch.
    #[serde(default)]
    seq: u64,
}

impl Clone for JoinBook {
    fn clone(&self) -> Self {
        Self {
            pending: self.pending.clone(),
            finished: self.finished.clone(),
            finished_set: self.finished_set.clone(),
            epoch: self.epoch,
            seq: self.seq,
        }
    }
}

/// Why a snapshot could not be read.
#[derive(Debug, thiserror::Error)]
#[error("join snapshot is not valid JSON")]
pub struct SnapshotError(#[source] serde_json::Error);

impl JoinBook {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs waiting for more parents.
    pub fn pending_runs(&self) -> usize {
        self.pending.len()
    }

    /// Adds `piece` for `run` and says what follows.
    pub fn add(&mut self, run: &RunId, piece: Piece, target: JoinTarget<'_>) -> JoinDecision {
        if self.finished_set.contains(run) {
            return JoinDecision::Ignore;
        }
        match piece {
            Piece::Failed(failure) => {
                self.finish(run);
                JoinDecision::Abort(failure)
            }
            Piece::Output { parent, output } => {
                let Ok(output) =
                    RawValue::from_string(String::from_utf8_lossy(&output).into_owned())
                else {
                    // Outputs come from our own serialisation; treat garbage as JSON null.
                    return self.record(run, parent, RawValue::NULL.to_owned(), target);
                };
                self.record(run, parent, output, target)
            }
        }
    }

    fn record(
        &mut self,
        run: &RunId,
        parent: StepName,
        output: Box<RawValue>,
        target: JoinTarget<'_>,
    ) -> JoinDecision {
        let outputs = self.pending.entry(run.clone()).or_default();
        outputs.insert(parent, output);
        let needs = target.needs();
        if !needs.iter().all(|step| outputs.contains_key(*step)) {
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
        self.finish(run);
        match fired {
            Some(body) => JoinDecision::Fire(body),
            None => JoinDecision::Wait,
        }
    }

    fn finish(&mut self, run: &RunId) {
        self.pending.remove(run);
        if self.finished_set.insert(run.clone()) {
            self.finished.push_back(run.clone());
        }
        while self.finished.len() > REMEMBERED_FINISHED_RUNS {
            if let Some(old) = self.finished.pop_front() {
                self.finished_set.remove(&old);
            }
        }
    }

    /// The book as JSON, to persist before acknowledging the pieces it holds; each call
    /// numbers a newer snapshot.
    pub fn snapshot(&mut self) -> Vec<u8> {
        self.seq += 1;
        serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec())
    }

    /// The snapshot's version: later snapshots compare greater.
    pub fn version(&self) -> (u64, u64) {
        (self.epoch, self.seq)
    }

    /// A book from a snapshot.
    pub fn restore(snapshot: &[u8]) -> Result<Self, SnapshotError> {
        let mut book: Self = serde_json::from_slice(snapshot).map_err(SnapshotError)?;
        book.finished_set = book.finished.iter().cloned().collect();
        Ok(book)
    }

    /// The book a consumer taking over a shard starts from: the newest of the snapshots found
    /// (unreadable ones are skipped and counted), in a new epoch above all of them.
    pub fn newest<'a>(snapshots: impl IntoIterator<Item = &'a [u8]>) -> (Self, usize) {
        let mut newest: Option<Self> = None;
        let mut top_epoch = 0;
        let mut unreadable = 0;
        for snapshot in snapshots {
            match Self::restore(snapshot) {
                Ok(book) => {
                    top_epoch = top_epoch.max(book.epoch);
                    if newest.as_ref().is_none_or(|n| book.version() > n.version()) {
                        newest = Some(book);
                    }
                }
                Err(_) => unreadable += 1,
            }
        }
        let mut book = newest.unwrap_or_default();
        book.epoch = top_epoch + 1;
        book.seq = 0;
        (book, unreadable)
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
        Piece::Output {
            parent: name(parent),
            output: json.as_bytes().to_vec(),
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
            JoinDecision::Fire(br#"[{"n":1},"x"]"#.to_vec())
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
            JoinDecision::Fire(_)
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
                Piece::Failed(failure.clone()),
                JoinTarget::Step(&shape)
            ),
            JoinDecision::Abort(failure.clone())
        );
        assert_eq!(
            book.add(&run("r"), output("c", "2"), JoinTarget::Step(&shape)),
            JoinDecision::Ignore
        );
        assert_eq!(
            book.add(&run("r"), Piece::Failed(failure), JoinTarget::Step(&shape)),
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
        let JoinDecision::Fire(body) =
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
            JoinDecision::Fire(b"[7,8]".to_vec())
        );
        assert!(JoinBook::restore(b"not json").is_err());
    }

    #[test]
    fn the_finished_memory_is_bounded() {
        let shape = shape();
        let mut book = JoinBook::new();
        for i in 0..REMEMBERED_FINISHED_RUNS + 10 {
            let r = run(&format!("r{i}"));
            book.add(&r, output("b", "1"), JoinTarget::Step(&shape));
            book.add(&r, output("c", "1"), JoinTarget::Step(&shape));
        }
        assert_eq!(book.finished.len(), REMEMBERED_FINISHED_RUNS);
        assert_eq!(book.finished_set.len(), REMEMBERED_FINISHED_RUNS);
    }

    #[test]
    fn a_late_snapshot_of_a_previous_consumer_never_wins() {
        let run = RunId::new("r1").unwrap();
        let leaves = [StepName::new("x").unwrap(), StepName::new("y").unwrap()];
        let piece = |parent: &str| Piece::Output {
            parent: StepName::new(parent).unwrap(),
            output: b"1".to_vec(),
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
            JoinDecision::Fire(_)
        ));
    }
}
