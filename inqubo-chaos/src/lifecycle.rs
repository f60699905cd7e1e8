//! Lifecycle operations mixed into the load: some runs are cancelled at a random moment
//! (`--cancel-every`), others fail one step fatally on purpose and are resumed once their
//! `run.failed` is seen (`--fail-every`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use inqubo::{Client, Error, EventKind, RunId, WorkflowName};

use crate::observer::Tally;

/// A cancel lands this long after its run's trigger, at most: some before the run ends,
/// some after.
pub(crate) const CANCEL_WITHIN: Duration = Duration::from_millis(250);

/// How long one cancel request waits for its answer.
const CANCEL_ANSWER: Duration = Duration::from_secs(10);

/// How long a cancel or a resume keeps trying through transient errors (a broker restart).
const PATIENCE: Duration = Duration::from_secs(60);

/// Which runs get which treatment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    /// Cancel every Nth run.
    pub(crate) cancel_every: Option<u64>,
    /// Fail every Nth run once, then resume it.
    pub(crate) fail_every: Option<u64>,
    /// The number of steps of the workflow, which the failing step cycles through.
    pub(crate) steps: usize,
}

impl Plan {
    /// Whether run `run` (counted from 0) is cancelled.
    pub(crate) fn cancels(&self, run: u64) -> bool {
        self.cancel_every
            .is_some_and(|every| every > 0 && (run + 1).is_multiple_of(every))
    }

    /// The index of the step that fails run `run` on purpose, if it is one to fail and
    /// resume. Runs to cancel are left out, so that each run has one expected ending. The
    /// failing step cycles through the workflow's steps from one such run to the next.
    pub(crate) fn fails_at(&self, run: u64) -> Option<usize> {
        let every = self.fail_every.filter(|every| *every > 0)?;
        if !(run + 1).is_multiple_of(every) || self.cancels(run) || self.steps == 0 {
            return None;
        }
        Some((((run + 1) / every - 1) % self.steps as u64) as usize)
    }
}

/// What came of cancelling a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CancelAnswer {
    /// The run join cancelled the run.
    Accepted,
    /// The run had already ended this way (`succeeded`, `failed` or `cancelled`).
    Refused(String),
    /// No runner answered in time, even after retries; the request stays queued.
    Unanswered,
    /// The request could not be made.
    Failed(String),
}

/// A cancel and how many times it was sent again after a transient error, of which how
/// many after the broker returned the request as unroutable.
#[derive(Debug)]
pub(crate) struct Cancel {
    pub(crate) run: String,
    pub(crate) answer: CancelAnswer,
    pub(crate) retries: u32,
    pub(crate) unroutable: u32,
}

/// Whether a cancel or resume that failed with `error` is worth trying again: transient
/// errors, and unroutable requests, which a broker returns while it recovers its bindings
/// after a restart (and before any runner declared the run join). The harness retries its
/// triggers on the same grounds.
fn worth_retrying(error: &Error) -> bool {
    error.is_transient() || matches!(error, Error::Unroutable { .. })
}

/// Cancels `run_id` `after` its trigger (a random moment within [`CANCEL_WITHIN`]), sending
/// the request again after transient errors (for [`PATIENCE`]).
pub(crate) async fn cancel_soon(
    client: Client,
    workflow: WorkflowName,
    run_id: RunId,
    after: Duration,
    tally: Arc<Mutex<Tally>>,
) -> Cancel {
    tokio::time::sleep(after).await;
    let deadline = Instant::now() + PATIENCE;
    let (mut retries, mut unroutable) = (0, 0);
    let answer = loop {
        let error = match client
            .cancel(&workflow, &run_id, "chaos", CANCEL_ANSWER)
            .await
        {
            Ok(()) => break CancelAnswer::Accepted,
            Err(Error::CancelRefused { ended, .. }) => break CancelAnswer::Refused(ended),
            Err(error) => error,
        };
        if !worth_retrying(&error) || Instant::now() > deadline {
            break match error {
                Error::CancelUnanswered { .. } => CancelAnswer::Unanswered,
                error => CancelAnswer::Failed(error.to_string()),
            };
        }
        tracing::debug!(%error, run_id = %run_id, "cancel failed; retrying");
        retries += 1;
        unroutable += u32::from(matches!(error, Error::Unroutable { .. }));
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    if let Ok(mut tally) = tally.lock() {
        let answer = match &answer {
            CancelAnswer::Accepted => "accepted".to_owned(),
            CancelAnswer::Refused(ended) => format!("refused: {ended}"),
            CancelAnswer::Unanswered => "unanswered".to_owned(),
            CancelAnswer::Failed(error) => format!("failed: {error}"),
        };
        tally.note(run_id.as_str(), &format!("cancel {answer}"));
    }
    Cancel {
        run: run_id.to_string(),
        answer,
        retries,
        unroutable,
    }
}

/// The cancel requests in one line: how many were accepted, refused (and how the runs had
/// ended), unanswered or failed, and how many were sent again.
pub(crate) fn describe_cancels(cancels: &[Cancel], runs: u64, plan: &Plan) -> String {
    let planned = (0..runs).filter(|run| plan.cancels(*run)).count();
    let count = |answer: &CancelAnswer| cancels.iter().filter(|c| c.answer == *answer).count();
    let refused: Vec<String> = ["succeeded", "failed", "cancelled"]
        .into_iter()
        .map(|ended| (ended, count(&CancelAnswer::Refused(ended.to_owned()))))
        .filter(|(_, n)| *n > 0)
        .map(|(ended, n)| format!("{n} {ended}"))
        .collect();
    let refused_total = cancels
        .iter()
        .filter(|c| matches!(c.answer, CancelAnswer::Refused(_)))
        .count();
    let failed = cancels
        .iter()
        .filter(|c| matches!(c.answer, CancelAnswer::Failed(_)))
        .count();
    let retries: u32 = cancels.iter().map(|c| c.retries).sum();
    let unroutable: u32 = cancels.iter().map(|c| c.unroutable).sum();
    let mut line = format!(
        "{planned}: {} accepted, {refused_total} refused{}, {} unanswered, {failed} failed; {retries} sent again ({unroutable} after an unroutable return)",
        count(&CancelAnswer::Accepted),
        if refused.is_empty() {
            String::new()
        } else {
            format!(" (run already {})", refused.join(", "))
        },
        count(&CancelAnswer::Unanswered),
    );
    if let Some(Cancel {
        run,
        answer: CancelAnswer::Failed(error),
        ..
    }) = cancels
        .iter()
        .find(|c| matches!(c.answer, CancelAnswer::Failed(_)))
    {
        line.push_str(&format!("; first failure: {run}: {error}"));
    }
    line
}

/// What came of resuming a run that failed on purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resume {
    /// Resumed into this generation.
    Resumed(u32),
    /// Every try failed, the last one with this error.
    GaveUp(String),
}

/// The resumes done so far, per run, and the tries that failed.
#[derive(Debug, Default)]
pub(crate) struct Resumes {
    pub(crate) done: HashMap<String, Resume>,
    /// Tries that found none of the run's inputs parked (yet), and tries that failed otherwise.
    pub(crate) found_nothing: u32,
    pub(crate) failed_tries: u32,
}

/// Resumes each run of `runs` once the observer saw its first generation fail, one at a
/// time (a resume takes every parked message out of the queue while it looks through them,
/// so two at once would hide each other's inputs). Returns when every run is resumed or
/// given up; the caller stops it earlier by aborting it.
pub(crate) async fn resume_failed(
    client: Client,
    workflow: WorkflowName,
    runs: Vec<RunId>,
    tally: Arc<Mutex<Tally>>,
    resumes: Arc<Mutex<Resumes>>,
) {
    let mut first_try: HashMap<RunId, Instant> = HashMap::new();
    loop {
        let due: Vec<(RunId, u32)> = {
            let Ok(tally) = tally.lock() else { return };
            let Ok(resumes) = resumes.lock() else { return };
            if runs
                .iter()
                .all(|run| resumes.done.contains_key(run.as_str()))
            {
                return;
            }
            runs.iter()
                .filter(|run| !resumes.done.contains_key(run.as_str()))
                .filter(|run| tally.ending(run.as_str(), 1) == Some(EventKind::RunFailed))
                .map(|run| (run.clone(), tally.generation(run.as_str())))
                .collect()
        };
        for (run, seen) in due {
            let mut broker_away = false;
            let outcome = if seen >= 2 {
                // An earlier try took effect although it reported an error.
                Some(Resume::Resumed(seen))
            } else {
                let result = client.resume(&workflow, &run).await;
                if let Ok(mut tally) = tally.lock() {
                    let what = match &result {
                        Ok(resumed) => format!(
                            "resumed into generation {}, {} inputs",
                            resumed.generation, resumed.inputs
                        ),
                        Err(error) => format!("resume failed: {error}"),
                    };
                    tally.note(run.as_str(), &what);
                }
                match result {
                    Ok(resumed) => Some(Resume::Resumed(resumed.generation)),
                    Err(error) => {
                        tracing::debug!(%error, run_id = %run, "resume failed; trying again");
                        let since = *first_try.entry(run.clone()).or_insert_with(Instant::now);
                        let gave_up = since.elapsed() > PATIENCE
                            || !(worth_retrying(&error)
                                || matches!(error, Error::NothingToResume { .. }));
                        let nothing = matches!(error, Error::NothingToResume { .. });
                        broker_away = !nothing;
                        if let Ok(mut resumes) = resumes.lock() {
                            if nothing {
                                resumes.found_nothing += 1;
                            } else {
                                resumes.failed_tries += 1;
                            }
                        }
                        gave_up.then(|| Resume::GaveUp(error.to_string()))
                    }
                }
            };
            if let Some(outcome) = outcome
                && let Ok(mut resumes) = resumes.lock()
            {
                resumes.done.insert(run.to_string(), outcome);
            }
            if broker_away {
                // The other runs would fail the same way: wait a little before the next round.
                tokio::time::sleep(Duration::from_millis(400)).await;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The id of run number `run`.
pub(crate) fn run_id(run: u64) -> String {
    format!("run-{run}")
}

/// How run number `run` ended: the generation and kind of its terminal event in its final
/// generation (the highest seen, or the one a resume started). `None` while it has not ended,
/// and while a run failed on purpose waits for its resume.
pub(crate) fn run_end(
    plan: &Plan,
    run: u64,
    tally: &Tally,
    resumes: &Resumes,
) -> Option<(u32, EventKind)> {
    let id = run_id(run);
    let resumed = resumes.done.get(&id);
    let at_least = match resumed {
        Some(Resume::Resumed(generation)) => *generation,
        _ => 1,
    };
    let end = tally.final_ending(&id, at_least)?;
    if plan.fails_at(run).is_some() && resumed.is_none() && end == (1, EventKind::RunFailed) {
        return None;
    }
    Some(end)
}

/// Every run judged, once the harness stops waiting.
#[derive(Debug, Default)]
pub(crate) struct Verdict {
    /// Runs whose final generation succeeded, failed, or was cancelled.
    pub(crate) succeeded: usize,
    pub(crate) failed: usize,
    pub(crate) cancelled: usize,
    /// Runs that never ended in their final generation, with their last event.
    pub(crate) lost: Vec<String>,
    /// Runs that failed on purpose; of those, resumed, and ended `succeeded` after it.
    pub(crate) failed_on_purpose: usize,
    pub(crate) resumed: usize,
    pub(crate) succeeded_after_resume: usize,
    pub(crate) resumes_given_up: usize,
    /// Runs that ended otherwise than their treatment (and the answers they got) call for.
    pub(crate) mismatches: Vec<String>,
}

/// Judges runs `0..runs`: how each ended, against what its treatment in `plan` and the
/// answers to its cancel request say.
pub(crate) fn judge(
    plan: &Plan,
    runs: u64,
    tally: &Tally,
    resumes: &Resumes,
    cancels: &[Cancel],
) -> Verdict {
    let answers: HashMap<&str, &CancelAnswer> = cancels
        .iter()
        .map(|cancel| (cancel.run.as_str(), &cancel.answer))
        .collect();
    let mut verdict = Verdict::default();
    for run in 0..runs {
        let id = run_id(run);
        let failing = plan.fails_at(run).is_some();
        verdict.failed_on_purpose += usize::from(failing);
        let resumed = resumes.done.get(&id);
        match resumed {
            Some(Resume::Resumed(_)) => verdict.resumed += 1,
            Some(Resume::GaveUp(error)) => {
                verdict.resumes_given_up += 1;
                verdict
                    .mismatches
                    .push(format!("{id}: not resumed ({error})"));
            }
            None => {}
        }
        let Some((generation, kind)) = run_end(plan, run, tally, resumes) else {
            let mut last = tally.last_event(&id).map_or_else(
                || "no event".to_owned(),
                |(event, generation)| format!("{event}, generation {generation}"),
            );
            if failing && resumed.is_none() && tally.ending(&id, 1) == Some(EventKind::RunFailed) {
                last.push_str("; not resumed yet");
            }
            verdict.lost.push(format!("{id} (last seen: {last})"));
            continue;
        };
        match kind {
            EventKind::RunSucceeded => verdict.succeeded += 1,
            EventKind::RunCancelled => verdict.cancelled += 1,
            _ => verdict.failed += 1,
        }
        let first = tally.ending(&id, 1).map_or("nothing", EventKind::as_str);
        let expected = if failing {
            if let Some(Resume::Resumed(into)) = resumed {
                let ok = (generation, kind) == (*into, EventKind::RunSucceeded) && *into == 2;
                verdict.succeeded_after_resume += usize::from(ok);
                (!ok).then(|| {
                    format!("resumed into generation {into}, expected to end succeeded in 2")
                })
            } else {
                None
            }
        } else if plan.cancels(run) {
            match answers.get(id.as_str()) {
                Some(CancelAnswer::Accepted) if first != "cancelled" => {
                    Some("its cancel was accepted".to_owned())
                }
                Some(CancelAnswer::Refused(ended)) if first != ended => {
                    Some(format!("its cancel was refused as already {ended}"))
                }
                _ => None,
            }
        } else if generation != 1 || kind == EventKind::RunCancelled {
            Some("neither cancelled nor resumed by the harness".to_owned())
        } else {
            None
        };
        if let Some(why) = expected {
            verdict.mismatches.push(format!(
                "{id}: generation 1 ended {first}, generation {generation} ended {kind}; {why}"
            ));
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_to_cancel_are_not_failed_and_the_failing_step_cycles() {
        let plan = Plan {
            cancel_every: Some(10),
            fail_every: Some(7),
            steps: 4,
        };
        assert!(plan.cancels(9) && plan.cancels(69) && !plan.cancels(10));
        let failing: Vec<(u64, usize)> = (0..40)
            .filter_map(|run| plan.fails_at(run).map(|step| (run, step)))
            .collect();
        assert_eq!(failing, [(6, 0), (13, 1), (20, 2), (27, 3), (34, 0)]);
        assert_eq!(plan.fails_at(69), None, "run 70 is cancelled, not failed");
        let none = Plan {
            cancel_every: None,
            fail_every: None,
            steps: 4,
        };
        assert!((0..100).all(|run| !none.cancels(run) && none.fails_at(run).is_none()));
    }
}
