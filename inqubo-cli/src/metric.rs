//! The monitor's Prometheus metrics, counted from the lifecycle events of every runner.
//!
//! The step counters carry the same names as a runner's own (`RunnerBuilder::metrics_addr`),
//! so one dashboard query works on either; the monitor's cover the whole fleet, a runner's
//! only its process. Tell them apart by the scrape job.

use std::time::Duration;

use inqubo::{EventKind, LifecycleEvent};

/// Counts one recorded event; `took` is the attempt's duration when the event ended one.
pub(crate) fn observe(event: &LifecycleEvent, took: Option<Duration>) {
    metrics::counter!("inqubo_monitor_events_total").increment(1);
    let workflow = event.workflow.to_string();
    if event.kind.is_run_event() {
        let outcome = match event.kind {
            EventKind::RunSucceeded => "succeeded",
            EventKind::RunFailed => "failed",
            EventKind::RunCancelled => "cancelled",
            _ => return,
        };
        metrics::counter!("inqubo_runs_finished_total", "workflow" => workflow, "outcome" => outcome)
            .increment(1);
        return;
    }
    let Some(step) = event.step.as_ref().map(ToString::to_string) else {
        return;
    };
    let name = match event.kind {
        EventKind::Started => Some("inqubo_steps_started_total"),
        EventKind::Succeeded => Some("inqubo_steps_succeeded_total"),
        EventKind::Retrying => Some("inqubo_steps_retried_total"),
        EventKind::Failed => Some("inqubo_steps_failed_total"),
        EventKind::Skipped => None,
        _ => return,
    };
    if let Some(name) = name {
        metrics::counter!(name, "workflow" => workflow.clone(), "step" => step.clone())
            .increment(1);
    }
    if matches!(event.kind, EventKind::Failed | EventKind::Skipped) {
        // A step that fails for good parks its input, and so does one skipped because its run
        // had ended (as a runner counts them).
        let reason = event.body["reason"]
            .as_str()
            .unwrap_or("unknown")
            .to_owned();
        metrics::counter!("inqubo_steps_parked_total", "workflow" => workflow.clone(), "step" => step.clone(), "reason" => reason)
            .increment(1);
    }
    if let Some(took) = took {
        metrics::histogram!("inqubo_step_duration_seconds", "workflow" => workflow, "step" => step)
            .record(took.as_secs_f64());
    }
}
