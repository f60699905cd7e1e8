//! How long a join book remembers runs that ended, and forgetting them: a late duplicate piece
//! or a second trigger of a run id is known for what it is as long as its run is remembered.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Ending, JoinBook};
use crate::name::RunId;

/// The most runs that ended a book remembers, whatever [`RunMemory`] says: a guard against
/// running out of memory, far above what a day of runs at a million a day puts in one shard.
pub const MAX_REMEMBERED_RUNS: usize = 2_000_000;

/// How long a book remembers runs that ended: to know a late duplicate piece, or a second
/// trigger of the run id, for what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunMemory {
    /// Runs that succeeded or were cancelled (default 24 hours: far longer than a piece can be
    /// held up by a consumer timeout, a confirm timeout or a broker restart).
    pub ended: Duration,
    /// Runs that failed (default 7 days, the run-state stream's retention): their outputs are
    /// kept for a resume as long.
    pub failed: Duration,
}

impl Default for RunMemory {
    fn default() -> Self {
        Self {
            ended: Duration::from_secs(24 * 3600),
            failed: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// What a book knows of a run that ended here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Ended {
    pub(super) how: Ending,
    pub(super) generation: u32,
    /// When, on the book's clock (milliseconds since the Unix epoch; 0: not known yet).
    pub(super) at: u64,
}

impl JoinBook {
    /// Records that `run` ended `how` in `generation`, at the book's clock.
    pub(super) fn end(&mut self, run: &RunId, how: Ending, generation: u32) {
        self.generations.remove(run);
        let ended = Ended {
            how,
            generation,
            at: self.clock,
        };
        if let Some(before) = self.ended.insert(run.clone(), ended) {
            // Ended before: it leaves the list it was in (a failed run ending again).
            if before.how == Ending::Aborted {
                self.failed.retain(|failed| failed != run);
            } else {
                self.finished.retain(|finished| finished != run);
            }
        }
        if how == Ending::Aborted {
            self.failed.push_back(run.clone());
        } else {
            self.finished.push_back(run.clone());
        }
        while self.finished.len() + self.failed.len() > MAX_REMEMBERED_RUNS {
            let oldest = match (self.finished.front(), self.failed.front()) {
                (Some(_), None) => self.finished.pop_front(),
                (None, Some(_)) => self.failed.pop_front(),
                _ => self.finished.pop_front(),
            };
            if let Some(old) = oldest {
                self.forget(&old);
            }
        }
    }

    pub(super) fn forget(&mut self, run: &RunId) {
        self.ended.remove(run);
        self.pending.remove(run);
        self.maps.remove(run);
        self.generations.remove(run);
    }

    /// Sets the book's clock to `now_ms` (the time of the batch about to be added, in
    /// milliseconds since the Unix epoch) and forgets the runs that ended longer ago than
    /// `memory` says. Runs that ended before the book had a clock are stamped with this one.
    pub fn tick(&mut self, now_ms: u64, memory: RunMemory) {
        if self.clock == 0 {
            for ended in self.ended.values_mut().filter(|e| e.at == 0) {
                ended.at = now_ms;
            }
        }
        self.clock = now_ms;
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        for (failed, keep) in [(false, memory.ended), (true, memory.failed)] {
            let cutoff = now_ms.saturating_sub(millis(keep));
            loop {
                let list = if failed {
                    &mut self.failed
                } else {
                    &mut self.finished
                };
                let Some(front) = list.front() else { break };
                let expired = self.ended.get(front).is_none_or(|e| e.at < cutoff);
                if !expired {
                    break;
                }
                if let Some(old) = list.pop_front() {
                    self.forget(&old);
                }
            }
        }
    }
}
