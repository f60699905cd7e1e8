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

mod fault;

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use fault::{fail_first, fatal_first, hang_first, panic_first};

use crate::{
    EventKind, FailedBody, FailureReason, LifecycleEvent, RunId, RunOutcome, StepName, Workflow,
    engine::{Admission, Effects, Engine, Limits, RunEnd, RunEnding},
    join::JoinBook,
    protocol::{
        self, Destination, Headers, Incoming, Names, Outgoing, RoutingKey, effective_delay, header,
    },
    run_attempt,
    trace::{child_traceparent, new_traceparent},
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

/// Where a queued message waits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Queue {
    Step(StepName),
    Join(String, u32),
    Parked,
}

/// A message in a queue.
struct Queued {
    queue: Queue,
    ready_at: Instant,
    routing_key: String,
    headers: Headers,
    message_id: String,
    body: Vec<u8>,
}

impl Queued {
    fn incoming(&self) -> Incoming<'_> {
        Incoming {
            routing_key: &self.routing_key,
            redelivered: false,
            headers: self.headers.clone(),
            message_id: Some(&self.message_id),
            body: &self.body,
        }
    }
}

/// A mandatory message that no queue took.
struct Unroutable(String);

/// The in-memory broker of one run: queues bound like the RabbitMQ runtime binds them.
struct Broker<'a> {
    runner: &'a TestRunner,
    run_id: RunId,
    names: Names,
    queued: Vec<Queued>,
    books: HashMap<(String, u32), JoinBook>,
    events: Vec<LifecycleEvent>,
    parked: Vec<Parked>,
    /// The parked messages as they sit in the parked queue, for a resume.
    parked_queue: Vec<Queued>,
    outcome: Option<RunOutcome>,
    /// What every runner would know from the run-state feed.
    ended: Option<RunEnd>,
    /// Cancelled when the run ends elsewhere: what a running step's context observes.
    cancel: CancellationToken,
    resumes_left: u32,
}

impl<'a> Broker<'a> {
    fn new(runner: &'a TestRunner, run_id: RunId) -> Self {
        Self {
            runner,
            run_id,
            names: Names::default(),
            queued: Vec::new(),
            books: HashMap::new(),
            events: Vec::new(),
            parked: Vec::new(),
            parked_queue: Vec::new(),
            outcome: None,
            ended: None,
            cancel: CancellationToken::new(),
            resumes_left: runner.resumes,
        }
    }

    fn engine(&self) -> &'a Engine {
        &self.runner.engine
    }

    /// The step queues bound to `key` on the events exchange: a step's parents' `succeeded`,
    /// or the trigger for a first step. Join steps take their input from their join shards.
    fn bound_to(&self, key: &RoutingKey) -> Vec<StepName> {
        let workflow = self.engine().workflow();
        workflow
            .steps()
            .iter()
            .filter(|s| !s.is_join() && !self.runner.unbound.contains(s.name()))
            .filter(|s| {
                if s.parents().is_empty() {
                    RoutingKey::step_input(workflow.name(), None) == *key
                } else {
                    s.parents()
                        .iter()
                        .any(|p| RoutingKey::step_input(workflow.name(), Some(p)) == *key)
                }
            })
            .map(|s| s.name().clone())
            .collect()
    }

    /// Routes `message` as RabbitMQ would; `received` are the headers of the delivery it
    /// answers, for messages that inherit them.
    fn publish(&mut self, message: Outgoing, received: &Headers) -> Result<(), Unroutable> {
        let routing_key = self.names.address(&message.destination).routing_key;
        let mut headers = if message.inherit_headers {
            received.clone()
        } else {
            Headers::new()
        };
        headers.extend(&message.headers);
        let mut queues = Vec::new();
        let mut delay = std::time::Duration::ZERO;
        match &message.destination {
            Destination::Events(key) => {
                self.observe(key, &headers, &message.body);
                queues.extend(self.bound_to(key).into_iter().map(Queue::Step));
            }
            Destination::Step {
                step, delay: wait, ..
            } => {
                delay = effective_delay(*wait);
                if self.engine().workflow().step(step.as_str()).is_some() {
                    queues.push(Queue::Step(step.clone()));
                }
            }
            Destination::Join { join, shard, .. } => {
                queues.push(Queue::Join(join.clone(), *shard));
            }
            Destination::Parked(_) => {
                self.park(&headers, &message.body);
                self.parked_queue.push(Queued {
                    queue: Queue::Parked,
                    ready_at: Instant::now(),
                    routing_key,
                    headers,
                    message_id: message.message_id,
                    body: message.body,
                });
                return Ok(());
            }
            // The books live in memory here; nothing reads announcements or replies.
            Destination::JoinState { .. } | Destination::Registry | Destination::Reply(_) => {
                return Ok(());
            }
        }
        if queues.is_empty() && message.mandatory {
            return Err(Unroutable(routing_key));
        }
        let ready_at = Instant::now() + delay;
        for queue in queues {
            self.queued.push(Queued {
                queue,
                ready_at,
                routing_key: routing_key.clone(),
                headers: headers.clone(),
                message_id: message.message_id.clone(),
                body: message.body.clone(),
            });
        }
        Ok(())
    }

    /// Records an event on the events exchange, as a subscriber would see it.
    fn observe(&mut self, key: &RoutingKey, headers: &Headers, body: &[u8]) {
        let attempt = headers
            .int(header::ATTEMPT)
            .and_then(|n| u32::try_from(n).ok());
        let Ok(event) =
            LifecycleEvent::from_wire(key.as_str(), headers.text(header::RUN_ID), attempt, body)
        else {
            return;
        };
        let event = event.with_generation(
            headers
                .int(header::RUN_GENERATION)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(1),
        );
        if let Some(outcome) = RunOutcome::from_event(&event) {
            self.outcome = Some(outcome);
        }
        let how = match event.kind {
            EventKind::RunFailed => Some(RunEnding::Failed),
            EventKind::RunCancelled => Some(RunEnding::Cancelled),
            _ => None,
        };
        if let Some(how) = how {
            self.ended = Some(RunEnd {
                how,
                generation: event.generation,
            });
            if how == RunEnding::Cancelled || self.engine().workflow().fails_fast() {
                self.cancel.cancel();
            }
        }
        let cancel_now = self.runner.cancel_on.as_deref() == Some(event.short_name().as_str());
        self.events.push(event);
        if cancel_now {
            let request = protocol::cancel_request(
                self.engine().workflow().name(),
                &self.run_id,
                "cancelled by the test",
                None,
            );
            let _ = self.publish(request, &Headers::new());
        }
    }

    fn park(&mut self, headers: &Headers, body: &[u8]) {
        let text = |name| headers.text(name).unwrap_or_default().to_owned();
        let reason = serde_json::from_value(serde_json::Value::String(text(header::PARKED_REASON)))
            .unwrap_or(FailureReason::Undecodable);
        self.parked.push(Parked {
            step: text(header::PARKED_STEP),
            input: body.to_vec(),
            failure: FailedBody {
                error: text(header::PARKED_ERROR),
                attempt: headers
                    .int(header::PARKED_ATTEMPT)
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or_default(),
                reason,
            },
        });
    }

    /// Publishes `effects`; returns the routing key of the first mandatory message nobody
    /// took, if any (the others are published regardless, as on RabbitMQ).
    fn execute(&mut self, effects: Effects, received: &Headers) -> Option<String> {
        let mut unroutable = None;
        for message in effects.publish {
            if let Err(Unroutable(key)) = self.publish(message, received) {
                unroutable.get_or_insert(key);
            }
        }
        unroutable
    }

    /// Delivers queued messages in the order they become ready, until none is left; then
    /// resumes a failed run if told to, and goes on.
    async fn drive(&mut self) {
        loop {
            while let Some(index) = self.next_ready() {
                let queued = self.queued.remove(index);
                tokio::time::sleep_until(queued.ready_at).await;
                self.deliver(queued).await;
            }
            let failed = matches!(self.outcome, Some(RunOutcome::Failed(_)));
            if !failed || self.resumes_left == 0 {
                return;
            }
            self.resumes_left -= 1;
            self.resume();
        }
    }

    /// What `inqubo run resume` does: takes the run's parked inputs and sends them back.
    fn resume(&mut self) {
        let taken = std::mem::take(&mut self.parked_queue);
        let incoming: Vec<Incoming<'_>> = taken.iter().map(Queued::incoming).collect();
        let messages = protocol::resume_run(self.engine().workflow().name(), &incoming);
        self.cancel = CancellationToken::new();
        for message in messages.into_iter().flatten() {
            let _ = self.publish(message, &Headers::new());
        }
    }

    fn next_ready(&self) -> Option<usize> {
        self.queued
            .iter()
            .enumerate()
            .min_by_key(|(i, q)| (q.ready_at, *i))
            .map(|(i, _)| i)
    }

    async fn deliver(&mut self, queued: Queued) {
        let engine = self.engine();
        let incoming = queued.incoming();
        let trace = child_traceparent(incoming.traceparent());
        match &queued.queue {
            Queue::Join(join, shard) => {
                let key = (join.clone(), *shard);
                let mut book = self.books.remove(&key).unwrap_or_default();
                let effects = engine.join_piece(join, &mut book, &incoming, &trace);
                self.books.insert(key, book);
                self.execute(effects, &queued.headers);
            }
            // Nothing consumes the parked queue; only a resume takes from it.
            Queue::Parked => {}
            Queue::Step(step) => {
                let attempt = match engine.admit(step, &incoming, &trace, self.ended) {
                    Admission::Run(attempt) => attempt,
                    Admission::Settle(effects) => {
                        self.execute(effects, &queued.headers);
                        return;
                    }
                };
                if let Some(started) = engine.started(&attempt) {
                    let _ = self.publish(started, &queued.headers);
                }
                let Some(node) = engine.workflow().step(step.as_str()) else {
                    return;
                };
                let context = attempt.context().with_cancel(self.cancel.clone());
                let outcome = run_attempt(node, context, incoming.body).await;
                let effects = engine.finished(&attempt, &incoming, outcome);
                if let Some(key) = self.execute(effects, &queued.headers) {
                    let failed = engine.unroutable(&attempt, &incoming, &key);
                    self.execute(failed, &queued.headers);
                }
            }
        }
    }
}
