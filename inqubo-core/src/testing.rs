//! Run workflows in-process, without a broker, for fast unit tests of workflow logic.
//!
//! [`TestRunner`] drives a run to its end with the same rules as the RabbitMQ runtime: the
//! same attempts ([`run_attempt`]), retry policies, delay rounding, join bookkeeping
//! ([`JoinBook`]), events and parking of inputs that cannot be decoded. Retries wait on tokio's
//! clock, so under a paused clock (`#[tokio::test(start_paused = true)]`) a retry an hour away
//! completes at once.
//!
//! ```
//! use std::time::Duration;
//! use inqubo_core::{RetryPolicy, Step, StepContext, StepError, Workflow};
//! use inqubo_core::testing::{RunOutcome, TestRunner, fail_first};
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
//! assert_eq!(report.outcome, RunOutcome::Succeeded(serde_json::json!({"double": 42})));
//! assert_eq!(report.trail(), ["run.triggered", "double.started", "double.retrying",
//!     "double.started", "double.retrying", "double.started", "double.succeeded", "run.succeeded"]);
//! # }
//! ```

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    sync::Arc,
    time::Duration,
};

use serde::Serialize;
use tokio::time::Instant;

use crate::{
    AttemptOutcome, EventKind, FailedBody, FailureReason, LifecycleEvent, RunFailedBody, RunId,
    StartedBody, StepContext, StepError, StepFn, StepName, Workflow, WorkflowName,
    join::{JoinBook, JoinDecision, JoinTarget, Piece},
    protocol::effective_delay,
    run_attempt,
};

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    /// Every last step succeeded: their outputs keyed by step name.
    Succeeded(serde_json::Value),
    /// A step failed for good.
    Failed(RunFailedBody),
}

/// An input that was parked, with why.
#[derive(Debug, Clone, PartialEq)]
pub struct Parked {
    /// The step whose input it was.
    pub step: StepName,
    /// The input, as received.
    pub input: Vec<u8>,
    /// Why it was parked.
    pub failure: FailedBody,
}

/// Everything a run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// How it ended.
    pub outcome: RunOutcome,
    /// Every event, in the order published.
    pub events: Vec<LifecycleEvent>,
    /// Inputs parked on the way.
    pub parked: Vec<Parked>,
}

impl RunReport {
    /// The events as `step.kind` (or `run.kind`) strings.
    pub fn trail(&self) -> Vec<String> {
        self.events.iter().map(short).collect()
    }

    /// The events of one step (or of the run, for `"run"`), in order.
    pub fn trail_of(&self, step: &str) -> Vec<String> {
        self.trail()
            .into_iter()
            .filter(|e| e.split('.').next() == Some(step))
            .collect()
    }
}

fn short(event: &LifecycleEvent) -> String {
    match &event.step {
        Some(step) => format!("{step}.{}", event.kind),
        None => format!("run.{}", event.kind),
    }
}

/// A delivery waiting to be handled.
struct Pending {
    step: StepName,
    input: Vec<u8>,
    attempt: u32,
    ready_at: Instant,
}

/// Runs a workflow in-process; see the [module documentation](self).
#[derive(Debug, Clone)]
pub struct TestRunner {
    workflow: Workflow,
}

impl TestRunner {
    /// A runner of `workflow`.
    pub fn new(workflow: Workflow) -> Self {
        Self { workflow }
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
    #[allow(clippy::expect_used)]
    pub async fn run_json(&self, run_id: &str, input: Vec<u8>) -> RunReport {
        let run_id = RunId::new(run_id).expect("valid run id");
        let mut driver = Driver {
            workflow: &self.workflow,
            run_id,
            events: Vec::new(),
            parked: Vec::new(),
            queue: VecDeque::new(),
            joins: HashMap::new(),
            run_book: JoinBook::new(),
            outcome: None,
        };
        driver.emit(None, EventKind::RunTriggered, None, &input);
        let now = Instant::now();
        for root in self
            .workflow
            .steps()
            .iter()
            .filter(|s| s.parents().is_empty())
        {
            driver.queue.push_back(Pending {
                step: root.name().clone(),
                input: input.clone(),
                attempt: 1,
                ready_at: now,
            });
        }
        driver.drive().await;
        let outcome = driver.outcome.unwrap_or_else(|| {
            RunOutcome::Failed(RunFailedBody {
                step: self.workflow.steps()[0].name().clone(),
                error: "the run stalled: a join waits for a parent that never reported".into(),
                attempt: 0,
                reason: FailureReason::Fatal,
            })
        });
        RunReport {
            outcome,
            events: driver.events,
            parked: driver.parked,
        }
    }
}

struct Driver<'a> {
    workflow: &'a Workflow,
    run_id: RunId,
    events: Vec<LifecycleEvent>,
    parked: Vec<Parked>,
    queue: VecDeque<Pending>,
    joins: HashMap<StepName, JoinBook>,
    run_book: JoinBook,
    outcome: Option<RunOutcome>,
}

impl Driver<'_> {
    fn name(&self) -> WorkflowName {
        self.workflow.name().clone()
    }

    fn emit(
        &mut self,
        step: Option<&StepName>,
        kind: EventKind,
        attempt: Option<u32>,
        body: &[u8],
    ) {
        let body = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
        self.events.push(LifecycleEvent {
            workflow: self.name(),
            step: step.cloned(),
            kind,
            run_id: self.run_id.clone(),
            attempt,
            body,
        });
    }

    fn emit_json(&mut self, step: &StepName, kind: EventKind, attempt: u32, body: &impl Serialize) {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        self.emit(Some(step), kind, Some(attempt), &bytes);
    }

    /// Handles deliveries in the order they become ready, until none is left.
    async fn drive(&mut self) {
        while let Some(index) = self.next_ready() {
            let Some(pending) = self.queue.remove(index) else {
                break;
            };
            tokio::time::sleep_until(pending.ready_at).await;
            self.handle(pending).await;
        }
    }

    fn next_ready(&self) -> Option<usize> {
        self.queue
            .iter()
            .enumerate()
            .min_by_key(|(i, p)| (p.ready_at, *i))
            .map(|(i, _)| i)
    }

    async fn handle(&mut self, pending: Pending) {
        let Some(node) = self.workflow.step(pending.step.as_str()).cloned() else {
            return;
        };
        let attempt = pending.attempt;
        self.emit_json(
            node.name(),
            EventKind::Started,
            attempt,
            &StartedBody { attempt },
        );
        let ctx = StepContext {
            run_id: self.run_id.clone(),
            workflow: self.name(),
            step: node.name().clone(),
            attempt,
        };
        match run_attempt(&node, ctx, &pending.input).await {
            AttemptOutcome::Succeeded { output } => {
                self.emit(
                    Some(node.name()),
                    EventKind::Succeeded,
                    Some(attempt),
                    &output,
                );
                for child in node.children() {
                    match self.workflow.step(child.as_str()).and_then(|c| c.join()) {
                        Some(shape) => {
                            let shape = shape.clone();
                            let book = self.joins.entry(child.clone()).or_default();
                            let piece = Piece::Output {
                                parent: node.name().clone(),
                                output: output.clone(),
                            };
                            if let JoinDecision::Fire(input) =
                                book.add(&self.run_id, piece, JoinTarget::Step(&shape))
                            {
                                self.enqueue(child, input, 1, Duration::ZERO);
                            }
                        }
                        None => self.enqueue(child, output.clone(), 1, Duration::ZERO),
                    }
                }
                if node.children().is_empty() {
                    let leaves: Vec<StepName> =
                        self.workflow.leaves().map(|s| s.name().clone()).collect();
                    let piece = Piece::Output {
                        parent: node.name().clone(),
                        output,
                    };
                    if let JoinDecision::Fire(outputs) =
                        self.run_book
                            .add(&self.run_id, piece, JoinTarget::Run(&leaves))
                    {
                        self.emit(None, EventKind::RunSucceeded, None, &outputs);
                        let value = serde_json::from_slice(&outputs).unwrap_or_default();
                        self.outcome = Some(RunOutcome::Succeeded(value));
                    }
                }
            }
            retry @ AttemptOutcome::Retry { .. } => {
                let Some(mut body) = retry.retrying_body(attempt) else {
                    return;
                };
                let delay = effective_delay(Duration::from_millis(body.delay_ms));
                body.delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                self.emit_json(node.name(), EventKind::Retrying, attempt, &body);
                self.enqueue(node.name(), pending.input, attempt + 1, delay);
            }
            failed => {
                let Some(body) = failed.failed_body(attempt) else {
                    return;
                };
                self.fail(node.name(), pending.input, body);
            }
        }
    }

    fn enqueue(&mut self, step: &StepName, input: Vec<u8>, attempt: u32, delay: Duration) {
        self.queue.push_back(Pending {
            step: step.clone(),
            input,
            attempt,
            ready_at: Instant::now() + delay,
        });
    }

    fn fail(&mut self, step: &StepName, input: Vec<u8>, failure: FailedBody) {
        self.emit_json(step, EventKind::Failed, failure.attempt, &failure);
        self.parked.push(Parked {
            step: step.clone(),
            input,
            failure: failure.clone(),
        });
        let body = RunFailedBody {
            step: step.clone(),
            error: failure.error,
            attempt: failure.attempt,
            reason: failure.reason,
        };
        for join in self.workflow.joins_after(step) {
            if let Some(shape) = join.join() {
                let book = self.joins.entry(join.name().clone()).or_default();
                book.add(
                    &self.run_id,
                    Piece::Failed(body.clone()),
                    JoinTarget::Step(shape),
                );
            }
        }
        let leaves: Vec<StepName> = self.workflow.leaves().map(|s| s.name().clone()).collect();
        if let JoinDecision::Abort(failure) =
            self.run_book
                .add(&self.run_id, Piece::Failed(body), JoinTarget::Run(&leaves))
        {
            let bytes = serde_json::to_vec(&failure).unwrap_or_default();
            self.emit(None, EventKind::RunFailed, None, &bytes);
            self.outcome = Some(RunOutcome::Failed(failure));
        }
    }
}

/// Wraps a step function so that its first `n` attempts fail with a retryable error.
pub fn fail_first<I, O, F>(n: u32, step: F) -> impl StepFn<I, O>
where
    F: StepFn<I, O>,
    I: Send + 'static,
    O: Send + 'static,
{
    inject(n, step, |attempt| async move {
        Err(StepError::retryable(format!(
            "injected failure of attempt {attempt}"
        )))
    })
}

/// Wraps a step function so that its first `n` attempts panic.
pub fn panic_first<I, O, F>(n: u32, step: F) -> impl StepFn<I, O>
where
    F: StepFn<I, O>,
    I: Send + 'static,
    O: Send + 'static,
{
    inject(n, step, |attempt| async move {
        #[allow(clippy::panic)]
        {
            panic!("injected panic in attempt {attempt}")
        }
    })
}

/// Wraps a step function so that its first `n` attempts never finish (so they run into the
/// step's timeout).
pub fn hang_first<I, O, F>(n: u32, step: F) -> impl StepFn<I, O>
where
    F: StepFn<I, O>,
    I: Send + 'static,
    O: Send + 'static,
{
    inject(n, step, |_attempt| std::future::pending())
}

/// Wraps a step function so that its first `n` attempts fail with a fatal error.
pub fn fatal_first<I, O, F>(n: u32, step: F) -> impl StepFn<I, O>
where
    F: StepFn<I, O>,
    I: Send + 'static,
    O: Send + 'static,
{
    inject(n, step, |attempt| async move {
        Err(StepError::fatal(format!(
            "injected fatal failure of attempt {attempt}"
        )))
    })
}

fn inject<I, O, F, Fault, FaultFut>(n: u32, step: F, fault: Fault) -> impl StepFn<I, O>
where
    F: StepFn<I, O>,
    Fault: Fn(u32) -> FaultFut + Send + Sync + 'static,
    FaultFut: Future<Output = Result<O, StepError>> + Send + 'static,
    I: Send + 'static,
    O: Send + 'static,
{
    let step = Arc::new(step);
    let fault = Arc::new(fault);
    move |input: I, ctx: StepContext| {
        let step = Arc::clone(&step);
        let fault = Arc::clone(&fault);
        // Decided by the attempt number, so that a redelivered attempt behaves alike.
        let attempt = ctx.attempt;
        async move {
            if attempt <= n {
                fault(attempt).await
            } else {
                step.call(input, ctx).await
            }
        }
    }
}
