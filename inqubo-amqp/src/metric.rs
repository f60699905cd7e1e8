//! The runner's metrics, through the [`metrics`] facade: free when no recorder is installed,
//! exported by whichever recorder the process installs — Prometheus with
//! `RunnerBuilder::metrics_addr` (feature `prometheus`), or the application's own.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `inqubo_steps_started_total` | counter | workflow, step |
//! | `inqubo_steps_succeeded_total` | counter | workflow, step |
//! | `inqubo_steps_retried_total` | counter | workflow, step |
//! | `inqubo_steps_failed_total` | counter | workflow, step |
//! | `inqubo_steps_parked_total` | counter | workflow, step, reason |
//! | `inqubo_step_duration_seconds` | histogram | workflow, step |
//! | `inqubo_steps_in_flight` | gauge | workflow |
//! | `inqubo_reconnects_total` | counter | workflow |
//! | `inqubo_publish_confirm_seconds` | histogram | |
//! | `inqubo_publish_channel_renewals_total` | counter | |
//!
//! Handles are made once per step when its consumer starts, so a recorder installed after
//! the runner connected sees nothing until the next reconnect.

use std::time::Duration;

use inqubo_core::{FailureReason, StepName, WorkflowName};
use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

/// Histogram buckets for step durations, in seconds: 0.5 ms to the 10-minute default step
/// timeout. The runner's Prometheus endpoint and `inqubo monitor` both use them.
pub const STEP_DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 600.0,
];

/// The metric handles of one step.
#[derive(Debug, Clone)]
pub(crate) struct StepMetrics {
    workflow: String,
    step: String,
    started: Counter,
    succeeded: Counter,
    retried: Counter,
    failed: Counter,
    duration: Histogram,
    in_flight: Gauge,
}

impl StepMetrics {
    pub(crate) fn new(workflow: &WorkflowName, step: &StepName) -> Self {
        let (w, s) = (workflow.to_string(), step.to_string());
        Self {
            started: counter!("inqubo_steps_started_total", "workflow" => w.clone(), "step" => s.clone()),
            succeeded: counter!("inqubo_steps_succeeded_total", "workflow" => w.clone(), "step" => s.clone()),
            retried: counter!("inqubo_steps_retried_total", "workflow" => w.clone(), "step" => s.clone()),
            failed: counter!("inqubo_steps_failed_total", "workflow" => w.clone(), "step" => s.clone()),
            duration: histogram!("inqubo_step_duration_seconds", "workflow" => w.clone(), "step" => s.clone()),
            in_flight: gauge!("inqubo_steps_in_flight", "workflow" => w.clone()),
            workflow: w,
            step: s,
        }
    }

    /// An attempt began.
    pub(crate) fn started(&self) {
        self.started.increment(1);
    }

    /// An attempt ended, after `took`: `succeeded`, retried, or failed for good.
    pub(crate) fn finished(&self, took: Duration, outcome: Outcome) {
        self.duration.record(took.as_secs_f64());
        match outcome {
            Outcome::Succeeded => self.succeeded.increment(1),
            Outcome::Retried => self.retried.increment(1),
            Outcome::Failed => self.failed.increment(1),
        }
    }

    /// An input was parked.
    pub(crate) fn parked(&self, reason: FailureReason) {
        counter!("inqubo_steps_parked_total", "workflow" => self.workflow.clone(),
                 "step" => self.step.clone(), "reason" => reason.to_string())
        .increment(1);
    }

    /// Counts a delivery as in flight until the guard drops.
    pub(crate) fn in_flight(&self) -> InFlight {
        self.in_flight.increment(1.0);
        InFlight(self.in_flight.clone())
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome {
    Succeeded,
    Retried,
    Failed,
}

/// Decrements the in-flight gauge when dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// A runner reconnected to the broker.
pub(crate) fn reconnected(workflow: &WorkflowName) {
    counter!("inqubo_reconnects_total", "workflow" => workflow.to_string()).increment(1);
}

/// The broker confirmed a publish `took` after it was sent.
pub(crate) fn confirmed(took: Duration) {
    histogram!("inqubo_publish_confirm_seconds").record(took.as_secs_f64());
}

/// The publisher replaced a channel the broker kept refusing messages on.
pub(crate) fn channel_renewed() {
    counter!("inqubo_publish_channel_renewals_total").increment(1);
}
