//! What a runner knows of runs that ended elsewhere, and how it learns it.
//!
//! A run ends at its run join (`run.failed`, `run.cancelled`) and is resumed by an operator
//! (`run.resumed`), but its other steps may be queued or running on any runner. Every runner therefore follows the workflow's run-state
//! stream, `<prefix>.<workflow>.run-states`: a RabbitMQ stream bound to those three events and
//! kept for [`RUN_STATE_RETENTION`](crate::topology::RUN_STATE_RETENTION). A runner reads it
//! from its first message when it connects — so a runner started after a cancel, or down
//! during it, still honours it — and then follows it live. What it learns goes into
//! [`RunStates`]: one map lookup per step delivery, and the cancellation of the attempts of that
//! run it is running.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use futures_util::StreamExt;
use inqubo_core::{
    EventKind, RunId,
    engine::{RunEnd, RunEnding, RunState},
};
use lapin::{
    Channel, Consumer,
    options::{BasicAckOptions, BasicCancelOptions},
};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    error::{Error, Result},
    event_stream::event_from_delivery,
};

/// How long the stream must stay quiet before a runner that just connected counts it as read
/// to its end (and starts running steps).
pub(crate) const CAUGHT_UP_AFTER: Duration = Duration::from_millis(150);

/// Runs that ended, and the cancellation tokens of the attempts running here.
#[derive(Debug)]
pub(crate) struct RunStates {
    fail_fast: bool,
    known: Mutex<HashMap<RunId, RunState>>,
    running: Mutex<HashMap<RunId, (CancellationToken, usize)>>,
}

impl RunStates {
    /// The states of a workflow's runs; `fail_fast` tells whether a failure stops running
    /// attempts of the run.
    pub(crate) fn new(fail_fast: bool) -> Self {
        Self {
            fail_fast,
            known: Mutex::default(),
            running: Mutex::default(),
        }
    }

    fn known(&self) -> MutexGuard<'_, HashMap<RunId, RunState>> {
        self.known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn running(&self) -> MutexGuard<'_, HashMap<RunId, (CancellationToken, usize)>> {
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What this runner has heard of `run`: how it ended, and its latest resume.
    pub(crate) fn get(&self, run: &RunId) -> RunState {
        self.known().get(run).copied().unwrap_or_default()
    }

    /// Records that `run` was resumed to `generation`.
    pub(crate) fn record_resume(&self, run: RunId, generation: u32) {
        self.known().entry(run).or_default().resumed(generation);
    }

    /// Records that `run` ended; cancels its attempts running here if that stops them.
    pub(crate) fn record(&self, run: RunId, end: RunEnd) {
        let stops = end.how == RunEnding::Cancelled || self.fail_fast;
        {
            let mut known = self.known();
            let state = known.entry(run.clone()).or_default();
            if state
                .end
                .is_some_and(|known| end.generation < known.generation)
            {
                return;
            }
            state.ended(end);
        }
        if let Some((token, _)) = self.running().get(&run).filter(|_| stops) {
            debug!(run_id = %run, "telling the run's running attempts it ended");
            token.cancel();
        }
    }

    /// A token that fires when `run` ends elsewhere, held while an attempt of it runs here.
    pub(crate) fn enter(self: &Arc<Self>, run: &RunId) -> Running {
        let token = {
            let mut running = self.running();
            let entry = running
                .entry(run.clone())
                .or_insert_with(|| (CancellationToken::new(), 0));
            entry.1 += 1;
            entry.0.clone()
        };
        Running {
            states: Arc::clone(self),
            run: run.clone(),
            token,
        }
    }
}

/// An attempt running here; dropping it forgets the run's token when it was the last.
#[derive(Debug)]
pub(crate) struct Running {
    states: Arc<RunStates>,
    run: RunId,
    token: CancellationToken,
}

impl Running {
    /// The run's token, for the attempt's `StepContext`.
    pub(crate) fn token(&self) -> CancellationToken {
        self.token.clone()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut running = self.states.running();
        if let Some(entry) = running.get_mut(&self.run) {
            entry.1 = entry.1.saturating_sub(1);
            if entry.1 == 0 {
                running.remove(&self.run);
            }
        }
    }
}

/// Follows the run-state stream into `states` until `cancel` fires or the consumer fails;
/// `caught_up` is sent once the stream has been quiet for [`CAUGHT_UP_AFTER`].
pub(crate) async fn follow(
    states: Arc<RunStates>,
    channel: Channel,
    mut consumer: Consumer,
    cancel: CancellationToken,
    caught_up: oneshot::Sender<()>,
) -> Result<()> {
    let queue = consumer.queue().to_string();
    let mut caught_up = Some(caught_up);
    loop {
        let next = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            next = tokio::time::timeout(CAUGHT_UP_AFTER, consumer.next()) => next,
        };
        let delivery = match next {
            Err(_quiet) => {
                if let Some(caught_up) = caught_up.take() {
                    let _ = caught_up.send(());
                }
                continue;
            }
            Ok(Some(Ok(delivery))) => delivery,
            Ok(Some(Err(error))) => return Err(error.into()),
            Ok(None) => return Err(Error::ConsumerStopped { queue }),
        };
        match event_from_delivery(&delivery) {
            Ok(event) => {
                let generation = event.generation;
                match event.kind {
                    EventKind::RunFailed => states.record(
                        event.run_id,
                        RunEnd {
                            how: RunEnding::Failed,
                            generation,
                        },
                    ),
                    EventKind::RunCancelled => states.record(
                        event.run_id,
                        RunEnd {
                            how: RunEnding::Cancelled,
                            generation,
                        },
                    ),
                    EventKind::RunResumed => states.record_resume(event.run_id, generation),
                    _ => {}
                }
            }
            Err(error) => warn!(%error, "run-state stream holds a message that is no event"),
        }
        // Streams need acknowledgements for their flow control only.
        delivery.ack(BasicAckOptions::default()).await?;
    }
    channel
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str) -> RunId {
        RunId::new(id).unwrap()
    }

    #[test]
    fn a_cancel_stops_running_attempts_and_a_failure_only_when_failing_fast() {
        let states = Arc::new(RunStates::new(false));
        let attempt = states.enter(&run("r"));
        let failed = RunEnd {
            how: RunEnding::Failed,
            generation: 1,
        };
        states.record(run("r"), failed);
        assert!(
            !attempt.token().is_cancelled(),
            "this workflow lets branches finish"
        );
        assert_eq!(states.get(&run("r")).end, Some(failed));
        states.record(
            run("r"),
            RunEnd {
                how: RunEnding::Cancelled,
                generation: 1,
            },
        );
        assert!(attempt.token().is_cancelled());
        drop(attempt);
        assert!(states.running().is_empty());
    }

    #[test]
    fn an_older_generation_never_replaces_a_newer_one() {
        let states = RunStates::new(true);
        let end = |generation| RunEnd {
            how: RunEnding::Failed,
            generation,
        };
        states.record(run("r"), end(2));
        states.record(run("r"), end(1));
        assert_eq!(states.get(&run("r")).end, Some(end(2)));
        states.record_resume(run("r"), 3);
        states.record_resume(run("r"), 2);
        assert_eq!(states.get(&run("r")).resumed, 3);
    }
}
