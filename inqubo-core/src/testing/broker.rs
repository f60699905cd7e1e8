//! The in-memory broker of the harness: it routes the engine's messages the way RabbitMQ routes
//! them under the runtime's bindings, and delivers them to the engine in the order they become
//! ready.

use std::collections::HashMap;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Parked, TestRunner};
use crate::{
    EventKind, FailedBody, FailureReason, LifecycleEvent, RunId, RunOutcome, StepName,
    engine::{Admission, Effects, Engine, RunEnd, RunEnding, RunState},
    join::JoinBook,
    protocol::{
        self, Destination, Headers, Incoming, JOIN_SHARDS, Names, Outgoing, RoutingKey,
        effective_delay, header,
    },
    run_attempt,
    trace::child_traceparent,
};

/// Where a queued message waits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Queue {
    Step(StepName),
    Join(String, u32),
    Parked,
}

/// A message in a queue.
#[derive(Clone)]
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
pub(super) struct Unroutable(String);

/// The in-memory broker of one run: queues bound like the RabbitMQ runtime binds them.
pub(super) struct Broker<'a> {
    runner: &'a TestRunner,
    run_id: RunId,
    names: Names,
    /// Messages waiting, in the order they become ready (ties: the order they were queued).
    queued: std::collections::BTreeMap<(Instant, u64), Queued>,
    /// How many messages were queued so far: the tie-breaker of `queued`.
    sequence: u64,
    books: HashMap<(String, u32), JoinBook>,
    pub(super) events: Vec<LifecycleEvent>,
    pub(super) parked: Vec<Parked>,
    /// The parked messages as they sit in the parked queue, for a resume.
    parked_queue: Vec<Queued>,
    pub(super) outcome: Option<RunOutcome>,
    /// What every runner would know from the run-state feed.
    known: RunState,
    /// Cancelled when the run ends elsewhere: what a running step's context observes.
    cancel: CancellationToken,
    resumes_left: u32,
}

impl<'a> Broker<'a> {
    pub(super) fn new(runner: &'a TestRunner, run_id: RunId) -> Self {
        Self {
            runner,
            run_id,
            names: Names::default(),
            queued: std::collections::BTreeMap::new(),
            sequence: 0,
            books: HashMap::new(),
            events: Vec::new(),
            parked: Vec::new(),
            parked_queue: Vec::new(),
            outcome: None,
            known: RunState::default(),
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
            .filter(|s| s.listens_to_parents() && !self.runner.unbound.contains(s.name()))
            .filter(|s| {
                if s.parents().is_empty() {
                    workflow.takes_trigger(s)
                        && RoutingKey::step_input(workflow.name(), None) == *key
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
    pub(super) fn publish(
        &mut self,
        message: Outgoing,
        received: &Headers,
    ) -> Result<(), Unroutable> {
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
            Destination::Join { join, slot, .. } => {
                queues.push(Queue::Join(join.clone(), *slot % JOIN_SHARDS));
            }
            // A trigger that waits: the queues bound to the trigger, after the delay.
            Destination::DelayedTrigger {
                workflow,
                delay: wait,
            } => {
                delay = effective_delay(*wait);
                let key = RoutingKey::run_triggered(workflow);
                queues.extend(self.bound_to(&key).into_iter().map(Queue::Step));
            }
            // Nothing is redelivered here; should it be, the step's queue runs it as well.
            Destination::Redelivered(_) => {
                let step = headers
                    .text(header::REDELIVERED_STEP)
                    .and_then(|name| self.engine().workflow().step(name))
                    .map(|node| node.name().clone());
                queues.extend(step.map(Queue::Step));
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
            // The books live in memory here; nothing reads announcements, replies or probes.
            Destination::JoinJournal { .. }
            | Destination::Registry
            | Destination::Reply(_)
            | Destination::Scheduler(_) => {
                return Ok(());
            }
        }
        if queues.is_empty() && message.mandatory {
            return Err(Unroutable(routing_key));
        }
        let ready_at = Instant::now() + delay;
        for queue in queues {
            self.sequence += 1;
            self.queued.insert(
                (ready_at, self.sequence),
                Queued {
                    queue,
                    ready_at,
                    routing_key: routing_key.clone(),
                    headers: headers.clone(),
                    message_id: message.message_id.clone(),
                    body: message.body.clone(),
                },
            );
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
        let number = |name| headers.int(name).and_then(|n| u32::try_from(n).ok());
        let event = event
            .with_generation(number(header::RUN_GENERATION).unwrap_or(1))
            .with_element(protocol::Element::from_headers(
                headers.int(header::MAP_INDEX),
                headers.int(header::MAP_SIZE),
            ));
        if let Some(outcome) = RunOutcome::from_event(&event) {
            self.outcome = Some(outcome);
        }
        let how = match event.kind {
            EventKind::RunFailed => Some(RunEnding::Failed),
            EventKind::RunCancelled => Some(RunEnding::Cancelled),
            _ => None,
        };
        if let Some(how) = how {
            self.known.ended(RunEnd {
                how,
                generation: event.generation,
            });
            if how == RunEnding::Cancelled || self.engine().workflow().fails_fast() {
                self.cancel.cancel();
            }
        }
        if event.kind == EventKind::RunResumed {
            self.known.resumed(event.generation);
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
        let elements = effects
            .fan_out
            .map(|fan_out| fan_out.inputs(0..fan_out.len()))
            .unwrap_or_default();
        for message in effects.publish.into_iter().chain(elements) {
            if let Err(Unroutable(key)) = self.publish(message, received) {
                unroutable.get_or_insert(key);
            }
        }
        unroutable
    }

    /// Delivers queued messages in the order they become ready, until none is left; then
    /// resumes a failed run if told to, and goes on.
    pub(super) async fn drive(&mut self) {
        loop {
            while let Some((_, queued)) = self.queued.pop_first() {
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
        let workflow = self.engine().workflow().name().clone();
        let messages = protocol::resume_run(&workflow, &incoming);
        let generation = protocol::next_generation(&incoming);
        let inputs = messages.iter().flatten().count();
        let mut kept = Vec::new();
        let mut sent = Vec::new();
        for (parked, message) in taken.iter().zip(messages) {
            match message {
                Some(message) => sent.push(message),
                None => kept.push(parked.clone()),
            }
        }
        self.parked_queue = kept;
        self.cancel = CancellationToken::new();
        let announce = protocol::run_resumed(&workflow, &self.run_id, generation, inputs);
        let _ = self.publish(announce, &Headers::new());
        for message in sent {
            let _ = self.publish(message, &Headers::new());
        }
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
                let attempt = match engine.admit(step, &incoming, &trace, self.known) {
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
