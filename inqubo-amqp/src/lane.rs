//! Priority lanes of a step (see `inqubo_core::priority`): which lane's delivery starts next.

use std::sync::atomic::{AtomicUsize, Ordering};

use inqubo_core::{Priority, priority::FAIR_SHARE};
use tokio::sync::Notify;

/// Which of a step's priority lanes starts next: a lane's input waits while an input of a
/// higher class waits, unless [`FAIR_SHARE`] inputs of higher classes started meanwhile (so
/// that no class starves). One per step of a workflow with priorities, shared by the
/// consumers of its lanes.
#[derive(Debug, Default)]
pub(crate) struct LaneGate {
    /// Inputs received and not started yet, per class (by rank).
    waiting: [AtomicUsize; 3],
    /// Starts of higher classes while an input of this class waited.
    passed: [AtomicUsize; 3],
    changed: Notify,
}

impl LaneGate {
    pub(crate) fn arrived(&self, priority: Priority) {
        self.waiting[priority.rank()].fetch_add(1, Ordering::SeqCst);
    }

    /// Returns when an input of `priority` may start.
    pub(crate) async fn turn(&self, priority: Priority) {
        let rank = priority.rank();
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let higher_waiting =
                (0..rank).any(|higher| self.waiting[higher].load(Ordering::SeqCst) > 0);
            if !higher_waiting || self.passed[rank].load(Ordering::SeqCst) >= FAIR_SHARE {
                self.passed[rank].store(0, Ordering::SeqCst);
                return;
            }
            changed.await;
        }
    }

    /// An input of `priority` started (or, `started` false, went back unstarted).
    pub(crate) fn left(&self, priority: Priority, started: bool) {
        let rank = priority.rank();
        self.waiting[rank].fetch_sub(1, Ordering::SeqCst);
        if started {
            for lower in rank + 1..3 {
                if self.waiting[lower].load(Ordering::SeqCst) > 0 {
                    self.passed[lower].fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;

    #[tokio::test]
    async fn a_lower_class_waits_for_a_higher_one_but_never_starves() {
        let gate = Arc::new(LaneGate::default());
        // Nothing higher waits: a normal input starts at once.
        gate.arrived(Priority::Normal);
        tokio::time::timeout(Duration::from_secs(1), gate.turn(Priority::Normal))
            .await
            .expect("nothing higher waits");
        gate.left(Priority::Normal, true);
        // A high input waits: a low one holds back...
        gate.arrived(Priority::High);
        gate.arrived(Priority::Low);
        let low = tokio::spawn({
            let gate = Arc::clone(&gate);
            async move { gate.turn(Priority::Low).await }
        });
        tokio::task::yield_now().await;
        assert!(
            !low.is_finished(),
            "a low input waits while a high one does"
        );
        // ... while high inputs keep coming and starting, until its fair share is reached.
        for started in 1..=FAIR_SHARE {
            gate.left(Priority::High, true);
            gate.arrived(Priority::High);
            tokio::task::yield_now().await;
            if started < FAIR_SHARE {
                assert!(!low.is_finished(), "after {started} high starts");
            }
        }
        tokio::time::timeout(Duration::from_secs(1), low)
            .await
            .expect("the low input starts after its fair share")
            .unwrap();
    }
}
