//! A book's snapshot: its JSON form, its version, and how a new owner picks one.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Ended, Ending, JoinBook, MapResults};
use crate::name::{RunId, StepName};

/// A finished run in a snapshot: `[id, at]` when it fired in its first generation (nearly
/// every run), else `[id, how, generation, at]`. Snapshots written before the book kept
/// times hold `id` and `[id, how, generation]`; their runs are stamped with the first tick.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FinishedRun {
    Fired(RunId),
    FiredAt(RunId, u64),
    Other(RunId, Ending, u32),
    OtherAt(RunId, Ending, u32, u64),
}

/// A book as written to its state queue (see [`Snapshot`], which reads it back).
#[derive(Serialize)]
struct SnapshotOf<'a> {
    pending: &'a HashMap<RunId, HashMap<StepName, Box<RawValue>>>,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    maps: &'a HashMap<RunId, HashMap<StepName, MapResults>>,
    finished: FinishedOf<'a>,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    generations: &'a HashMap<RunId, u32>,
    clock: u64,
    epoch: u64,
    seq: u64,
}

/// A book's finished runs, written as [`FinishedRun`]s in order, without copying them.
struct FinishedOf<'a>(&'a JoinBook);

impl Serialize for FinishedOf<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let book = self.0;
        let mut seq = serializer.serialize_seq(None)?;
        for run in book.finished.iter().chain(&book.failed) {
            match book.ended.get(run) {
                Some(Ended {
                    how: Ending::Fired,
                    generation: 1,
                    at,
                }) => seq.serialize_element(&(run, at))?,
                Some(other) => {
                    seq.serialize_element(&(run, other.how, other.generation, other.at))?;
                }
                None => {}
            }
        }
        seq.end()
    }
}

/// A book as read from its state queue.
#[derive(Debug, Deserialize)]
struct Snapshot {
    pending: HashMap<RunId, HashMap<StepName, Box<RawValue>>>,
    #[serde(default)]
    maps: HashMap<RunId, HashMap<StepName, MapResults>>,
    finished: Vec<FinishedRun>,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    generations: HashMap<RunId, u32>,
    #[serde(default)]
    clock: u64,
    #[serde(default)]
    epoch: u64,
    #[serde(default)]
    seq: u64,
}

/// Why a snapshot could not be read.
#[derive(Debug, thiserror::Error)]
#[error("join snapshot is not valid JSON")]
pub struct SnapshotError(#[source] serde_json::Error);

impl JoinBook {
    /// The book as JSON, to persist before acknowledging the pieces it holds; each call
    /// numbers a newer snapshot.
    pub fn snapshot(&mut self) -> Vec<u8> {
        self.next_batch();
        self.snapshot_at_version()
    }

    /// The book's clock: the time of the batch being added (see [`JoinBook::tick`]).
    pub fn clock(&self) -> u64 {
        self.clock
    }

    /// Numbers the next batch: the version of its journal record.
    pub fn next_batch(&mut self) {
        self.seq += 1;
    }

    /// Starts the epoch of a new owner, above `top_epoch` (the newest found) and its own.
    pub fn take_over(&mut self, top_epoch: u64) {
        self.epoch = top_epoch.max(self.epoch) + 1;
        self.seq = 0;
    }

    /// The book as JSON at its current version (a journal snapshot: it includes every batch
    /// up to this version).
    pub fn snapshot_at_version(&self) -> Vec<u8> {
        // Written straight from the book, borrowing: no copy of what it holds.
        let snapshot = SnapshotOf {
            pending: &self.pending,
            maps: &self.maps,
            finished: FinishedOf(self),
            generations: &self.generations,
            clock: self.clock,
            epoch: self.epoch,
            seq: self.seq,
        };
        serde_json::to_vec(&snapshot).unwrap_or_else(|_| b"{}".to_vec())
    }

    /// The snapshot's version: later snapshots compare greater.
    pub fn version(&self) -> (u64, u64) {
        (self.epoch, self.seq)
    }

    /// What the book holds, without its version (tests compare books with it).
    #[cfg(test)]
    pub(crate) fn content(&self) -> serde_json::Value {
        let mut value: serde_json::Value =
            serde_json::from_slice(&self.snapshot_at_version()).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            object.remove("epoch");
            object.remove("seq");
        }
        value
    }

    /// A book from a snapshot.
    pub fn restore(snapshot: &[u8]) -> Result<Self, SnapshotError> {
        let snapshot: Snapshot = serde_json::from_slice(snapshot).map_err(SnapshotError)?;
        let mut book = Self {
            pending: snapshot.pending,
            maps: snapshot.maps,
            generations: snapshot.generations,
            clock: snapshot.clock,
            epoch: snapshot.epoch,
            seq: snapshot.seq,
            ..Self::default()
        };
        for entry in snapshot.finished {
            let (run, how, generation, at) = match entry {
                FinishedRun::Fired(run) => (run, Ending::Fired, 1, 0),
                FinishedRun::FiredAt(run, at) => (run, Ending::Fired, 1, at),
                FinishedRun::Other(run, how, generation) => (run, how, generation, 0),
                FinishedRun::OtherAt(run, how, generation, at) => (run, how, generation, at),
            };
            let ended = Ended {
                how,
                generation,
                at,
            };
            if book.ended.insert(run.clone(), ended).is_none() {
                if how == Ending::Aborted {
                    book.failed.push_back(run);
                } else {
                    book.finished.push_back(run);
                }
            }
        }
        Ok(book)
    }

    /// The book a consumer taking over a shard starts from: the newest of the snapshots found
    /// (unreadable ones are skipped and counted), in a new epoch above all of them.
    pub fn newest<'a>(snapshots: impl IntoIterator<Item = &'a [u8]>) -> (Self, usize) {
        let (newest, top_epoch, unreadable) = Self::newest_found(snapshots);
        let mut book = newest.unwrap_or_default();
        book.take_over(top_epoch);
        (book, unreadable)
    }

    /// The newest of `snapshots` as it was written (its own version), the highest epoch among
    /// them, and how many could not be read.
    pub fn newest_found<'a>(
        snapshots: impl IntoIterator<Item = &'a [u8]>,
    ) -> (Option<Self>, u64, usize) {
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
        (newest, top_epoch, unreadable)
    }
}
