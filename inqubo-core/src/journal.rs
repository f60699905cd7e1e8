//! The journal of a join shard: how its [`JoinBook`] survives the runner that holds it, at a
//! cost per batch that does not grow with history.
//!
//! A shard's owner writes two kinds of record to the shard's journal queue:
//!
//! - a **batch record** after every batch: the pieces the batch added, in order (O(batch));
//! - now and then a **snapshot**: the whole book, cut into parts of at most
//!   [`SNAPSHOT_PART_BYTES`], so that no message approaches the broker's size limit however
//!   many joins are open. Once every part is confirmed, the records it covers are deleted.
//!
//! Every record carries a version `(epoch, seq)`: an owner that takes a shard over starts an
//! epoch above every record it found, and numbers its batches in it; a snapshot has the
//! version of the last batch it includes. A new owner rebuilds the book from the newest
//! *complete* snapshot and replays every later batch record in version order. [`JoinBook::add`]
//! is deterministic, so the replay arrives at the book the old owner had. A record it never
//! saw (the old owner died before the broker confirmed it) covers pieces that were not
//! acknowledged either: they are delivered again and added again. A snapshot whose parts are not
//! all there (its writer died while writing it) is ignored, and the records before it are still
//! there, since they are deleted only after a complete snapshot.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{
    event::RunFailedBody,
    join::{JoinBook, Piece},
    name::{RunId, StepName},
};

/// The largest part of a snapshot, in bytes.
pub const SNAPSHOT_PART_BYTES: usize = 1024 * 1024;

/// A snapshot is written once the batch records since the last one hold this many pieces (or
/// number [`SNAPSHOT_AFTER_RECORDS`]), and at least half as many bytes as that snapshot had:
/// the cost of snapshots, amortised over the pieces, stays constant whatever the size of the
/// book, and the journal stays within a few times the book's size.
pub const SNAPSHOT_AFTER_PIECES: usize = 10_000;

/// See [`SNAPSHOT_AFTER_PIECES`]: under a light load batches hold a piece or two, and the
/// records a snapshot lets go are deleted one by one.
pub const SNAPSHOT_AFTER_RECORDS: usize = 1_000;

/// What a journal record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// The pieces of one batch.
    Batch,
    /// One part of a snapshot.
    Snapshot {
        /// Which part, from 0.
        part: u32,
        /// How many parts the snapshot has.
        parts: u32,
    },
}

/// One journal record as read back: its kind, version and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Batch or snapshot part.
    pub kind: RecordKind,
    /// The version `(epoch, seq)`.
    pub version: (u64, u64),
    /// A batch's time (milliseconds since the Unix epoch; 0 if not written).
    pub time_ms: u64,
    /// The body: a batch's pieces as JSON, or a slice of the snapshot's bytes.
    pub body: Vec<u8>,
}

impl Record {
    /// Reads a record from a delivery of the journal queue; `None` if its headers say no
    /// kind or version.
    pub fn from_incoming(incoming: &crate::protocol::Incoming<'_>) -> Option<Self> {
        use crate::protocol::header;
        let headers = &incoming.headers;
        let number = |name| headers.int(name).and_then(|n| u64::try_from(n).ok());
        let version = (number(header::JOURNAL_EPOCH)?, number(header::JOURNAL_SEQ)?);
        let kind = match headers.text(header::JOURNAL_KIND)? {
            "batch" => RecordKind::Batch,
            "snapshot" => RecordKind::Snapshot {
                part: u32::try_from(number(header::JOURNAL_PART)?).ok()?,
                parts: u32::try_from(number(header::JOURNAL_PARTS)?).ok()?,
            },
            _ => return None,
        };
        Some(Self {
            kind,
            version,
            time_ms: number(header::JOURNAL_TIME).unwrap_or(0),
            body: incoming.body.to_vec(),
        })
    }
}

/// A piece as written in a batch record.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Logged {
    Output {
        run: RunId,
        parent: StepName,
        output: Box<RawValue>,
        generation: u32,
    },
    Failed {
        run: RunId,
        failure: RunFailedBody,
        generation: u32,
    },
    Element {
        run: RunId,
        parent: StepName,
        index: u32,
        size: u32,
        output: Box<RawValue>,
        generation: u32,
    },
    Cancel {
        run: RunId,
        reason: String,
    },
    Begin {
        run: RunId,
        again: bool,
    },
}

impl Logged {
    fn new(run: &RunId, piece: &Piece) -> Self {
        let run = run.clone();
        match piece {
            Piece::Output {
                parent,
                output,
                generation,
            } => Logged::Output {
                run,
                parent: parent.clone(),
                // As the book keeps it: bytes that are no JSON count as null.
                output: RawValue::from_string(String::from_utf8_lossy(output).into_owned())
                    .unwrap_or_else(|_| RawValue::NULL.to_owned()),
                generation: *generation,
            },
            Piece::Failed {
                failure,
                generation,
            } => Logged::Failed {
                run,
                failure: failure.clone(),
                generation: *generation,
            },
            Piece::Element {
                parent,
                element,
                output,
                generation,
            } => Logged::Element {
                run,
                parent: parent.clone(),
                index: element.index,
                size: element.size,
                output: RawValue::from_string(String::from_utf8_lossy(output).into_owned())
                    .unwrap_or_else(|_| RawValue::NULL.to_owned()),
                generation: *generation,
            },
            Piece::Cancel { reason } => Logged::Cancel {
                run,
                reason: reason.clone(),
            },
            Piece::Begin { again } => Logged::Begin { run, again: *again },
        }
    }

    fn into_piece(self) -> (RunId, Piece) {
        match self {
            Logged::Output {
                run,
                parent,
                output,
                generation,
            } => (
                run,
                Piece::Output {
                    parent,
                    output: output.get().as_bytes().to_vec(),
                    generation,
                },
            ),
            Logged::Failed {
                run,
                failure,
                generation,
            } => (
                run,
                Piece::Failed {
                    failure,
                    generation,
                },
            ),
            Logged::Element {
                run,
                parent,
                index,
                size,
                output,
                generation,
            } => (
                run,
                Piece::Element {
                    parent,
                    element: crate::protocol::Element { index, size },
                    output: output.get().as_bytes().to_vec(),
                    generation,
                },
            ),
            Logged::Cancel { run, reason } => (run, Piece::Cancel { reason }),
            Logged::Begin { run, again } => (run, Piece::Begin { again }),
        }
    }
}

/// The body of a batch record holding `pieces`.
pub fn batch_body(pieces: &[(RunId, Piece)]) -> Vec<u8> {
    let logged: Vec<Logged> = pieces.iter().map(|(run, p)| Logged::new(run, p)).collect();
    serde_json::to_vec(&logged).unwrap_or_else(|_| b"[]".to_vec())
}

/// The pieces of a batch record's body.
pub fn batch_pieces(body: &[u8]) -> Result<Vec<(RunId, Piece)>, serde_json::Error> {
    let logged: Vec<Logged> = serde_json::from_slice(body)?;
    Ok(logged.into_iter().map(Logged::into_piece).collect())
}

/// `snapshot` cut into parts of at most [`SNAPSHOT_PART_BYTES`] (at least one part).
pub fn snapshot_parts(snapshot: &[u8]) -> Vec<&[u8]> {
    if snapshot.is_empty() {
        return vec![snapshot];
    }
    snapshot.chunks(SNAPSHOT_PART_BYTES).collect()
}

/// What rebuilding a book from a journal found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rebuilt {
    /// The version of the snapshot the book started from (`None`: the legacy or empty book).
    pub snapshot: Option<(u64, u64)>,
    /// Batch records replayed on top of it.
    pub batches: usize,
    /// Pieces replayed.
    pub pieces: usize,
    /// Records that could not be read (skipped).
    pub unreadable: usize,
    /// Snapshots ignored because parts were missing.
    pub incomplete: usize,
    /// Batch records not replayed because an earlier record of their epoch is missing (its
    /// publish failed while the next batch's went through): their pieces, never
    /// acknowledged, come again.
    pub after_gap: usize,
}

/// Rebuilds a shard's book from `base` (the newest snapshot of the shard's former state queue,
/// or an empty book) and the journal's `records`, in any order. `tick` starts each replayed
/// batch at its time, and `apply` adds one replayed piece to the book (both through the
/// engine, which knows the join's target and how long runs are remembered). The result is in
/// a new epoch above every version found, ready for its new owner.
pub fn rebuild(
    base: JoinBook,
    records: Vec<Record>,
    mut tick: impl FnMut(&mut JoinBook, u64),
    mut apply: impl FnMut(&mut JoinBook, &RunId, Piece),
) -> (JoinBook, Rebuilt) {
    let mut found = Rebuilt::default();
    let mut top_epoch = base.version().0;
    // The newest complete snapshot.
    let mut snapshots: std::collections::BTreeMap<(u64, u64), Vec<Option<&Record>>> =
        std::collections::BTreeMap::new();
    for record in &records {
        top_epoch = top_epoch.max(record.version.0);
        if let RecordKind::Snapshot { part, parts } = record.kind {
            let slots = snapshots
                .entry(record.version)
                .or_insert_with(|| vec![None; parts as usize]);
            if let Some(slot) = slots.get_mut(part as usize) {
                *slot = Some(record);
            }
        }
    }
    let mut book = base;
    for (version, parts) in snapshots.iter().rev() {
        if parts.iter().any(Option::is_none) || *version <= book.version() {
            found.incomplete += usize::from(parts.iter().any(Option::is_none));
            continue;
        }
        let bytes: Vec<u8> = parts
            .iter()
            .flatten()
            .flat_map(|r| r.body.clone())
            .collect();
        match JoinBook::restore(&bytes) {
            Ok(restored) => {
                book = restored;
                found.snapshot = Some(*version);
                break;
            }
            Err(_) => found.unreadable += 1,
        }
    }
    let from = book.version();
    let mut batches: Vec<&Record> = records
        .iter()
        .filter(|r| r.kind == RecordKind::Batch && r.version > from)
        .collect();
    batches.sort_by_key(|r| r.version);
    // An owner publishes batch records in order, numbered from 1 in its epoch (or from the
    // snapshot it started from), and acknowledges a batch only once its record and every
    // earlier one are confirmed. A record after a missing one is of pieces that were never
    // acknowledged: replaying it before the missing batch's pieces come again would add
    // pieces out of order, so the rest of that epoch is left out.
    let mut last = from;
    let mut broken_epoch = None;
    for record in batches {
        let (epoch, seq) = record.version;
        if record.version == last {
            // The same record published twice (a retried publish).
            continue;
        }
        let expected = if epoch == last.0 { last.1 + 1 } else { 1 };
        if broken_epoch == Some(epoch) || seq != expected {
            broken_epoch = Some(epoch);
            found.after_gap += 1;
            continue;
        }
        last = record.version;
        match batch_pieces(&record.body) {
            Ok(pieces) => {
                found.batches += 1;
                found.pieces += pieces.len();
                if record.time_ms > 0 {
                    tick(&mut book, record.time_ms);
                }
                for (run, piece) in pieces {
                    apply(&mut book, &run, piece);
                }
            }
            Err(_) => found.unreadable += 1,
        }
    }
    book.take_over(top_epoch);
    (book, found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        FailureReason,
        join::{JoinTarget, Piece},
        workflow::JoinShape,
    };

    fn run(s: &str) -> RunId {
        RunId::new(s).unwrap()
    }
    fn name(s: &str) -> StepName {
        StepName::new(s).unwrap()
    }
    fn out(parent: &str, json: &str) -> Piece {
        Piece::Output {
            parent: name(parent),
            output: json.as_bytes().to_vec(),
            generation: 1,
        }
    }

    fn shape() -> JoinShape {
        JoinShape::Tuple(vec![JoinShape::Step(name("b")), JoinShape::Step(name("c"))])
    }

    fn batch(version: (u64, u64), pieces: &[(RunId, Piece)]) -> Record {
        Record {
            kind: RecordKind::Batch,
            version,
            time_ms: 0,
            body: batch_body(pieces),
        }
    }

    fn snapshot(book: &mut JoinBook) -> Vec<Record> {
        let version = book.version();
        let bytes = book.snapshot_at_version();
        let parts = snapshot_parts(&bytes);
        let count = u32::try_from(parts.len()).unwrap();
        parts
            .iter()
            .enumerate()
            .map(|(i, part)| Record {
                kind: RecordKind::Snapshot {
                    part: u32::try_from(i).unwrap(),
                    parts: count,
                },
                version,
                time_ms: 0,
                body: part.to_vec(),
            })
            .collect()
    }

    #[test]
    fn records_after_a_missing_one_of_their_epoch_are_left_for_their_pieces_to_come_again() {
        let shape = shape();
        let target = JoinTarget::Step(&shape);
        let mut applied = Vec::new();
        let records = vec![
            batch((1, 1), &[(run("r1"), out("b", "1"))]),
            // (1, 2) was never confirmed; (1, 3) was, and (1, 3) twice.
            batch((1, 3), &[(run("r1"), out("c", "2"))]),
            batch((1, 4), &[(run("r2"), out("b", "3"))]),
            // The next owner, which left the same records out, numbers its batches from 1.
            batch((2, 1), &[(run("r3"), out("b", "4"))]),
            batch((2, 1), &[(run("r3"), out("b", "4"))]),
            batch((2, 2), &[(run("r3"), out("c", "5"))]),
        ];
        let (book, found) = rebuild(
            JoinBook::new(),
            records,
            |_, _| {},
            |book, run, piece| {
                applied.push(run.to_string());
                book.add(run, piece, target);
            },
        );
        assert_eq!(applied, ["r1", "r3", "r3"]);
        assert_eq!(found.after_gap, 2);
        assert_eq!(found.batches, 3);
        // r1 waits for the piece that comes again; r3 fired.
        assert_eq!(book.pending_runs(), 1);
    }

    #[test]
    fn a_book_rebuilt_from_a_snapshot_and_later_batches_is_the_book_that_wrote_them() {
        let shape = shape();
        let target = JoinTarget::Step(&shape);
        let apply = |book: &mut JoinBook, run: &RunId, piece: Piece| {
            book.add(run, piece, target);
        };
        let failure = RunFailedBody {
            step: name("c"),
            error: "boom".into(),
            attempt: 1,
            reason: FailureReason::Fatal,
        };
        let batches: Vec<Vec<(RunId, Piece)>> = vec![
            vec![(run("r1"), out("b", "1")), (run("r2"), out("b", "2"))],
            vec![(run("r1"), out("c", "\"x\""))],
            vec![
                (
                    run("r3"),
                    Piece::Failed {
                        failure,
                        generation: 1,
                    },
                ),
                (run("r4"), Piece::Begin { again: false }),
                (
                    run("r5"),
                    Piece::Cancel {
                        reason: "no".into(),
                    },
                ),
            ],
            vec![(run("r2"), out("b", "not json at all"))],
        ];
        let mut owner = JoinBook::new();
        let mut records = Vec::new();
        for (i, pieces) in batches.iter().enumerate() {
            owner.next_batch();
            for (run, piece) in pieces {
                owner.add(run, piece.clone(), target);
            }
            records.push(batch(owner.version(), pieces));
            if i == 1 {
                records.extend(snapshot(&mut owner));
            }
        }
        // A snapshot whose writer died after its first part.
        owner.next_batch();
        let mut torn = snapshot(&mut owner);
        torn.truncate(1);
        if let Some(RecordKind::Snapshot { parts, .. }) = torn.first().map(|r| r.kind) {
            torn[0].kind = RecordKind::Snapshot {
                part: 0,
                parts: parts + 1,
            };
        }
        records.extend(torn);
        records.reverse(); // any order

        let (mut rebuilt, found) = rebuild(JoinBook::new(), records, |_, _| {}, apply);

        assert_eq!(found.snapshot, Some((0, 2)));
        assert_eq!((found.batches, found.pieces), (2, 4));
        assert_eq!(found.incomplete, 1);
        assert_eq!(rebuilt.version(), (1, 0), "a new epoch above every record");
        assert_eq!(
            rebuilt.content(),
            owner.content(),
            "the same pending joins and finished runs"
        );
        // And it decides as the old owner would have: r1 fired, r2 waits for c.
        assert_eq!(
            rebuilt.add(&run("r1"), out("c", "1"), target),
            crate::join::JoinDecision::Ignore
        );
        assert!(matches!(
            rebuilt.add(&run("r2"), out("c", "3"), target),
            crate::join::JoinDecision::Fire { .. }
        ));
    }

    #[test]
    fn a_large_snapshot_is_cut_into_parts_under_the_limit() {
        let big = vec![b'x'; SNAPSHOT_PART_BYTES * 2 + 10];
        let parts = snapshot_parts(&big);
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.len() <= SNAPSHOT_PART_BYTES));
        assert_eq!(parts.concat(), big);
        assert_eq!(snapshot_parts(b"").len(), 1);
    }
}
