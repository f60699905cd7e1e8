//! Run workflows in-process, without a broker, for fast unit tests of workflow logic.
//!
//! [`TestRunner`] is a second driver of the same [`Engine`] the RabbitMQ runtime drives: every
//! rule of a run — attempts, retry policies and delay rounding, joins, run ends, refusals
//! (`too_large`, `redelivery_limit`, undecodable input) and `unroutable` outcomes — is decided
//! by the engine, and this module only moves the engine's messages between in-memory queues
//! routed like RabbitMQ would route them. Retries wait on tokio's clock, so under a paused
//! clock (`#[tokio::test(start_paused = true)]`) a retry an hour away completes at once.
//!
//! ```
//! use std::time::Duration;
//! use inqubo_core::{RetryPolicy, RunOutcome, Step, StepContext, StepError, Workflow};
//! use inqubo_core::testing::{TestRunner, fail_first};
//!
//! async fn double(n: u32, _: StepContext) -> Result<u32, StepError> { Ok(n * 2) }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let flow = Workflow::builder("doubling")
//!     // Fails its first two attempts, then runs `double`; retries an hour apart.
//!     .start(Step::new("double", fail_first(2, double))
//!         .retry(RetryPolicy::limited(3, Duration::from_secs(3600))))
//!     .build()
//!     .unwrap();
//! let report = TestRunner::new(flow).run("r1", &21).await;
//! assert_eq!(report.outcome, Some(RunOutcome::Succeeded(serde_json::json!({"double": 42}))));
//! assert_eq!(report.trail(), ["run.triggered", "double.started", "double.retrying",
//!     "double.started", "double.retrying", "double.started", "double.succeeded", "run.succeeded"]);
//! # }
//! ```

mod broker;
mod fault;

use std::collections::HashSet;

use serde::Serialize;

pub use fault::{fail_first, fatal_first, hang_first, panic_first};

use broker::Broker;

use crate::{
    FailedBody, LifecycleEvent, RunId, RunOutcome, StepName, Workflow,
    engine::{Engine, Limits},
    protocol::{self, Headers},
    trace::new_traceparent,
};

/// An input that was parked, with why.
#[derive(Debug, Clone, PartialEq)]
pub struct Parked {
    /// The step (or join) whose input it was.
    pub step: String,
    /// The input, as received.
    pub input: Vec<u8>,
    /// Why it was parked.
    pub failure: FailedBody,
}

/// Everything a run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// How it ended: its last terminal event (a resumed run ends once per generation); `None`
    /// if it never ended (it stalled, or its trigger could not even be read).
    pub outcome: Option<RunOutcome>,
    /// Every event, in the order published.
    pub events: Vec<LifecycleEvent>,
    /// Inputs parked on the way.
    pub parked: Vec<Parked>,
}

impl RunReport {
    /// The events as `step.kind` (or `run.kind`) strings.
    pub fn trail(&self) -> Vec<String> {
        self.events.iter().map(LifecycleEvent::short_name).collect()
    }

    /// The events of one step (or of the run, for `"run"`), in order.
    pub fn trail_of(&self, step: &str) -> Vec<String> {
        self.trail()
            .into_iter()
            .filter(|e| e.split('.').next() == Some(step))
            .collect()
    }

    /// The terminal events (`run.succeeded`, `run.failed`, `run.cancelled`) published:
    /// exactly one per generation of a run that ended.
    pub fn terminal_events(&self) -> usize {
        self.events.iter().filter(|e| e.kind.ends_run()).count()
    }
}

/// Runs a workflow in-process; see the [module documentation](self).
#[derive(Debug, Clone)]
pub struct TestRunner {
    engine: Engine,
    unbound: HashSet<StepName>,
    cancel_on: Option<String>,
    resumes: u32,
}

impl TestRunner {
    /// A runner of `workflow` with the default [`Limits`].
    pub fn new(workflow: Workflow) -> Self {
        Self {
            engine: Engine::new(workflow, Limits::default()),
            unbound: HashSet::new(),
            cancel_on: None,
            resumes: 0,
        }
    }

    /// Cancels the run (as `Client::cancel` does) as soon as `event` is published: a short
    /// event name such as `"b.started"` or `"run.triggered"`.
    #[must_use]
    pub fn cancel_on(mut self, event: &str) -> Self {
        self.cancel_on = Some(event.to_owned());
        self
    }

    /// Resumes the run (as `inqubo run resume` does) each time it has failed and nothing is
    /// left in flight, up to `times` times.
    #[must_use]
    pub fn resume_failed(mut self, times: u32) -> Self {
        self.resumes = times;
        self
    }

    /// The same runner under other limits (the largest input, the redelivery limit...).
    #[must_use]
    pub fn limits(self, limits: Limits) -> Self {
        Self {
            engine: Engine::new(self.engine.workflow().clone(), limits),
            ..self
        }
    }

    /// Cuts `step`'s queue off the key it takes its input from, as if an operator had removed
    /// its binding: what its parent publishes for it becomes unroutable.
    ///
    /// # Panics
    ///
    /// If the workflow has no such step.
    #[must_use]
    #[allow(clippy::panic)]
    pub fn unbind(mut self, step: &str) -> Self {
        let Some(node) = self.engine.workflow().step(step) else {
            panic!("workflow has no step `{step}`");
        };
        self.unbound.insert(node.name().clone());
        self
    }

    /// Triggers run `run_id` with `input` and drives it to its end.
    ///
    /// # Panics
    ///
    /// If `run_id` is not a valid run id or `input` does not serialise.
    #[allow(clippy::expect_used)]
    pub async fn run(&self, run_id: &str, input: &impl Serialize) -> RunReport {
        let body = serde_json::to_vec(input).expect("test input serialises to JSON");
        self.run_json(run_id, body).await
    }

    /// Like [`TestRunner::run`], with the input as raw bytes (to test undecodable input).
    ///
    /// # Panics
    ///
    /// If `run_id` is not a valid run id.
    pub async fn run_json(&self, run_id: &str, input: Vec<u8>) -> RunReport {
        self.run_with_headers(run_id, input, Headers::new()).await
    }

    /// Like [`TestRunner::run_json`], with extra headers on the trigger (a redelivery count,
    /// say), set over the ones Inqubo puts there.
    ///
    /// # Panics
    ///
    /// If `run_id` is not a valid run id.
    #[allow(clippy::expect_used)]
    pub async fn run_with_headers(
        &self,
        run_id: &str,
        input: Vec<u8>,
        extra: Headers,
    ) -> RunReport {
        let run_id = RunId::new(run_id).expect("valid run id");
        let mut trigger = protocol::trigger(self.engine.workflow().name(), &run_id, input)
            .with_trace(&new_traceparent());
        trigger.headers.extend(&extra);
        let mut broker = Broker::new(self, run_id);
        // A trigger nobody is bound to leaves the run without an end: `outcome` stays `None`.
        let _ = broker.publish(trigger, &Headers::new());
        broker.drive().await;
        RunReport {
            outcome: broker.outcome,
            events: broker.events,
            parked: broker.parked,
        }
    }
}
