//! The path of one message: step queue → step → outcome events → ack.
//!
//! This is the RabbitMQ driver of the engine (`inqubo_core::engine`). For every delivery on a
//! step's queue the runner
//!
//! 1. decodes it ([`wire::incoming`]) and asks the engine whether it may run
//!    ([`Engine::admit`]): an input that is too large, redelivered too often or unreadable is
//!    parked at once, never requeued,
//! 2. publishes `started`,
//! 3. runs the attempt ([`run_attempt`]: decode, call, timeout, catch panics, ask the retry
//!    policy),
//! 4. publishes what the engine says the outcome calls for ([`Engine::finished`]), and if the
//!    broker returns one of those messages as unroutable, what that calls for
//!    ([`Engine::unroutable`]),
//! 5. waits until the broker has confirmed every one of those messages,
//! 6. and only then acknowledges the delivery.
//!
//! If any publish fails, the delivery is not acknowledged but returned to the queue, so the
//! attempt runs again: at-least-once, never lost.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use inqubo_core::{
    AttemptOutcome, Priority, StepNode,
    engine::{Admission, Effects, Engine},
    protocol::{self, Incoming},
    run_attempt,
    trace::{child_traceparent, trace_id},
};
use lapin::{
    Channel, Consumer,
    message::Delivery,
    options::{BasicAckOptions, BasicCancelOptions, BasicNackOptions},
    types::FieldTable,
};
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, Span, debug, info_span, warn};

pub(crate) use crate::lane::LaneGate;
use crate::{
    error::{Error, Result},
    metric::{self, StepMetrics},
    publisher::{CONFIRM_WINDOW, Publisher},
    run_state::RunStates,
    topology::Topology,
    wire::{self, Wire},
};

/// How long an ack or nack may take. On a connection that is dying (a broker restart) it may
/// never be answered; the attempt's task must not hang on it and keep its place in the
/// runner's in-flight limit. The broker redelivers what was not settled.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long to wait before returning a delivery whose outcome could not be published, so that
/// a broken broker does not turn the runner into a busy loop.
const REQUEUE_BACKOFF: Duration = Duration::from_secs(1);

/// How long a stopping consumer waits for each delivery the broker had already sent it.
const DRAIN_TIMEOUT: Duration = Duration::from_millis(500);

/// The queue a delivery was taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// The step's own queue.
    Step,
    /// The workflow's redelivered queue, taken one at a time.
    Redelivered,
}

/// Everything needed to run one step's deliveries.
#[derive(Debug)]
pub(crate) struct StepWorker {
    pub(crate) topology: Topology,
    pub(crate) engine: Arc<Engine>,
    /// Which runs ended, from the run-state stream.
    pub(crate) states: Arc<RunStates>,
    pub(crate) node: StepNode,
    pub(crate) publisher: Publisher,
    pub(crate) metrics: StepMetrics,
    /// For a step with a fleet-wide rate: when its next attempt may start.
    pub(crate) pace: Option<Pace>,
}

/// Spaces the starts of a step's attempts evenly: at most `per_second` a second.
#[derive(Debug)]
pub(crate) struct Pace {
    gap: Duration,
    next: tokio::sync::Mutex<tokio::time::Instant>,
}

impl Pace {
    /// At most `per_second` starts a second (at least one).
    pub(crate) fn per_second(per_second: u32) -> Self {
        Self {
            gap: Duration::from_secs(1) / per_second.max(1),
            next: tokio::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Waits for this start's turn.
    async fn turn(&self) {
        let mut next = self.next.lock().await;
        let now = tokio::time::Instant::now();
        let at = (*next).max(now);
        *next = at + self.gap;
        drop(next);
        tokio::time::sleep_until(at).await;
    }
}

impl StepWorker {
    /// Handles one delivery from start to acknowledgement.
    pub(crate) async fn handle(&self, delivery: Delivery, lane: Lane) {
        let _in_flight = self.metrics.in_flight();
        let processed = match caught(self.process(&delivery, lane)).await {
            Ok(processed) => processed,
            // A bug in the runtime, not in the step (run_attempt catches those): park the
            // input with the panic's message rather than leave the delivery hanging.
            Err(panic) => {
                tracing::error!(step = %self.node.name(), %panic, "handling an input panicked; parking it");
                let incoming = wire::incoming(&delivery);
                let trace = child_traceparent(incoming.traceparent());
                let effects =
                    self.engine
                        .internal_failure(self.node.name(), &incoming, &panic, &trace);
                self.execute(effects, delivery.properties.headers().as_ref())
                    .await
            }
        };
        match processed {
            Ok(()) => {
                let ack = delivery.ack(BasicAckOptions::default());
                settle(self.node.name().as_str(), "ack", ack).await;
            }
            Err(error) => {
                warn!(
                    step = %self.node.name(),
                    error = %error,
                    "outcome not confirmed; returning the input to its queue"
                );
                tokio::time::sleep(REQUEUE_BACKOFF).await;
                let requeue = BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                };
                settle(self.node.name().as_str(), "nack", delivery.nack(requeue)).await;
            }
        }
    }

    /// Publishes `effects` and waits for their confirms; `Ok` means the delivery may be acked.
    async fn execute(&self, effects: Effects, received: Option<&FieldTable>) -> Result<()> {
        if let Some(failure) = &effects.failure {
            self.metrics.parked(failure.reason);
            warn!(step = %self.node.name(), reason = %failure.reason, error = %failure.error, "input parked");
        }
        let messages = Wire::all(self.topology.names(), effects.publish, received);
        self.publisher.send_all(messages).await?;
        // A map's inputs, a window at a time: a wide map is never in memory all at once.
        if let Some(fan_out) = effects.fan_out {
            for start in (0..fan_out.len()).step_by(CONFIRM_WINDOW) {
                let window = fan_out.inputs(start..start + CONFIRM_WINDOW);
                let window = Wire::all(self.topology.names(), window, None);
                self.publisher.send_all(window).await?;
            }
        }
        Ok(())
    }

    /// Puts a delivery that never started back at the end of its step's queue as a new copy,
    /// and acknowledges it: returned to the broker instead, it would come back counted as
    /// redelivered. If the copy cannot be published, the delivery is left to go back when its
    /// channel closes.
    async fn return_unstarted(&self, delivery: Delivery) {
        let received = delivery.properties.headers().as_ref();
        let copy = protocol::unstarted(
            self.engine.workflow().name(),
            self.node.name(),
            &wire::incoming(&delivery),
        );
        let wire = Wire::all(self.topology.names(), vec![copy], received);
        match self.publisher.send_all(wire).await {
            Ok(()) => {
                let ack = delivery.ack(BasicAckOptions::default());
                settle(self.node.name().as_str(), "ack", ack).await;
            }
            Err(error) => {
                debug!(step = %self.node.name(), %error, "unstarted input not copied back; it returns as redelivered");
            }
        }
    }

    /// Runs the attempt and publishes its outcome; `Ok` means the delivery may be acked.
    async fn process(&self, delivery: &Delivery, lane: Lane) -> Result<()> {
        let received = delivery.properties.headers().as_ref();
        let incoming = wire::incoming(delivery);
        let span = info_span!(
            "step",
            trace_id = tracing::field::Empty,
            run_id = tracing::field::Empty,
            workflow = %self.engine.workflow().name(),
            step = %self.node.name(),
            attempt = tracing::field::Empty,
        );
        let trace = attempt_trace(&span, &incoming);
        span.record("trace_id", trace_id(&trace).unwrap_or_default());
        let known = incoming
            .run_id()
            .map(|run| self.states.get(&run))
            .unwrap_or_default();
        let admission = match lane {
            Lane::Step => self
                .engine
                .admit(self.node.name(), &incoming, &trace, known),
            Lane::Redelivered => {
                self.engine
                    .admit_redelivered(self.node.name(), &incoming, &trace, known)
            }
        };
        let attempt = match admission {
            Admission::Run(attempt) => attempt,
            Admission::Settle(effects) => {
                return self.execute(effects, received).instrument(span).await;
            }
        };
        span.record("run_id", tracing::field::display(attempt.run_id()));
        span.record("attempt", attempt.number());
        async {
            let started_event = self.engine.started(&attempt);
            let started = match &started_event {
                Some(event) => {
                    let wire = Wire::new(self.topology.names(), event.clone(), received);
                    Some(self.publisher.send(&wire).await)
                }
                None => None,
            };
            self.metrics.started();
            let began = Instant::now();
            let running = self.states.enter(attempt.run_id());
            let context = attempt.context().with_cancel(running.token());
            let outcome = run_attempt(&self.node, context, incoming.body).await;
            drop(running);
            self.metrics.finished(
                began.elapsed(),
                match &outcome {
                    AttemptOutcome::Succeeded { .. } => metric::Outcome::Succeeded,
                    AttemptOutcome::Retry { .. } => metric::Outcome::Retried,
                    _ => metric::Outcome::Failed,
                },
            );
            if let AttemptOutcome::Retry { error, .. } = &outcome {
                debug!(%error, "retrying");
            }
            let effects = self.engine.finished(&attempt, &incoming, outcome);
            let published = self.execute(effects, received).await;
            let started = match started {
                Some(Ok(confirm)) => confirm.wait().await,
                Some(Err(error)) => Err(error),
                None => Ok(()),
            };
            if let (Err(_), Some(event)) = (started, started_event) {
                self.execute(Effects::publish(vec![event]), received)
                    .await?;
            }
            match published {
                Err(Error::Unroutable { routing_key, .. }) => {
                    let effects = self.engine.unroutable(&attempt, &incoming, &routing_key);
                    self.execute(effects, received).await
                }
                other => other,
            }
        }
        .instrument(span)
        .await
    }
}

/// The `traceparent` of what an attempt publishes: the span's own when OpenTelemetry records
/// spans, else a fresh span id in the trace the delivery carries.
fn attempt_trace(span: &Span, incoming: &Incoming<'_>) -> String {
    #[cfg(feature = "otel")]
    if let Some(adopted) = crate::otel::adopt(span, incoming.traceparent()) {
        return adopted;
    }
    let _ = span;
    child_traceparent(incoming.traceparent())
}

/// The next delivery, or `None` once `cancel` fires; an error if the consumer failed or the
/// broker cancelled it (its queue was deleted).
async fn next_delivery(
    consumer: &mut Consumer,
    cancel: &CancellationToken,
) -> Result<Option<Delivery>> {
    let next = tokio::select! {
        biased;
        () = cancel.cancelled() => return Ok(None),
        next = consumer.next() => next,
    };
    match next {
        Some(Ok(delivery)) => Ok(Some(delivery)),
        Some(Err(error)) => Err(error.into()),
        None => Err(Error::ConsumerStopped {
            queue: consumer.queue().to_string(),
        }),
    }
}

/// `future`'s output, or the message of its panic.
async fn caught<T>(future: impl std::future::Future<Output = T>) -> std::result::Result<T, String> {
    use futures_util::FutureExt;
    std::panic::AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .map_err(|payload| {
            payload
                .downcast_ref::<&str>()
                .map(|m| (*m).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_owned())
        })
}

/// Waits (bounded) for an ack or nack; a failure only needs a warning, since the broker
/// redelivers whatever was not settled.
pub(crate) async fn settle(
    queue: &str,
    what: &str,
    settling: impl std::future::Future<Output = lapin::Result<bool>>,
) {
    match tokio::time::timeout(SETTLE_TIMEOUT, settling).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            warn!(queue, %error, "{what} failed; the broker will redeliver");
        }
        Err(_) => {
            warn!(queue, "{what} not answered; the broker will redeliver");
        }
    }
}

/// The signals a consumer obeys: `stop` (stop taking deliveries; those in hand finish) and
/// `lost` (the connection is gone: deliveries in hand can no longer be acknowledged, and the
/// broker hands them out again, so their attempts are dropped and free their place).
#[derive(Debug, Clone)]
pub(crate) struct Signals {
    pub(crate) stop: CancellationToken,
    pub(crate) lost: CancellationToken,
}

impl Signals {
    /// Handles `delivery` on `tracker`, unless the connection is lost first.
    fn spawn(
        &self,
        tracker: &TaskTracker,
        handling: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let lost = self.lost.clone();
        tracker.spawn(async move {
            tokio::select! {
                () = handling => {}
                () = lost.cancelled() => {}
            }
        });
    }
}

/// Consumes one step's queue (or one of its priority lanes, with the step's `lane` gate) until
/// `signals.stop` fires or the consumer fails, spawning one task per delivery on `tracker`.
/// `in_flight` bounds the deliveries being handled across the runner.
pub(crate) async fn consume(
    worker: Arc<StepWorker>,
    channel: Channel,
    mut consumer: Consumer,
    signals: Signals,
    tracker: TaskTracker,
    in_flight: Arc<Semaphore>,
    lane: Option<(Priority, Arc<LaneGate>)>,
) -> Result<()> {
    let cancel = signals.stop.clone();
    while let Some(delivery) = next_delivery(&mut consumer, &cancel).await? {
        if let Some((priority, gate)) = &lane {
            gate.arrived(*priority);
            let turn = tokio::select! {
                () = gate.turn(*priority) => true,
                () = cancel.cancelled() => false,
            };
            if !turn {
                gate.left(*priority, false);
                worker.return_unstarted(delivery).await;
                break;
            }
        }
        let permit = tokio::select! {
            permit = Arc::clone(&in_flight).acquire_owned() => permit,
            () = cancel.cancelled() => {
                if let Some((priority, gate)) = &lane {
                    gate.left(*priority, false);
                }
                worker.return_unstarted(delivery).await;
                break;
            }
        };
        if let Some((priority, gate)) = &lane {
            gate.left(*priority, true);
        }
        let Ok(permit) = permit else { break };
        worker.publisher.until_unblocked(&cancel).await;
        if let Some(pace) = &worker.pace {
            tokio::select! {
                () = pace.turn() => {}
                () = cancel.cancelled() => {
                    worker.return_unstarted(delivery).await;
                    break;
                }
            }
        }
        let worker = Arc::clone(&worker);
        // The delivery is settled on this channel: keep it open until it is, even when the
        // consumer stops first (a graceful shutdown lets attempts finish and ack).
        let open = channel.clone();
        signals.spawn(&tracker, async move {
            worker.handle(delivery, Lane::Step).await;
            drop(open);
            drop(permit);
        });
    }
    // Stop new deliveries, and put back those the broker had sent ahead (the prefetch) that
    // never started, uncounted. Whatever is left goes back when the channel closes.
    channel
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await?;
    while let Ok(Some(Ok(delivery))) = tokio::time::timeout(DRAIN_TIMEOUT, consumer.next()).await {
        worker.return_unstarted(delivery).await;
    }
    Ok(())
}

/// Consumes a workflow's redelivered queue until `cancel` fires, one delivery at a time (the
/// channel's prefetch is 1), each handled by the worker of the step it names. It does not
/// wait for the runner's in-flight limit, so that every delivery it holds has started.
pub(crate) async fn consume_redelivered(
    workers: Vec<Arc<StepWorker>>,
    channel: Channel,
    mut consumer: Consumer,
    signals: Signals,
    tracker: TaskTracker,
) -> Result<()> {
    let cancel = signals.stop.clone();
    while let Some(delivery) = next_delivery(&mut consumer, &cancel).await? {
        let named = wire::headers(delivery.properties.headers().as_ref())
            .text(protocol::header::REDELIVERED_STEP)
            .map(str::to_owned);
        // An input naming no step of ours goes to the first step's worker, whose engine
        // parks it with the reason.
        let Some(worker) = workers
            .iter()
            .find(|w| Some(w.node.name().as_str()) == named.as_deref())
            .or_else(|| workers.first())
            .map(Arc::clone)
        else {
            break;
        };
        worker.publisher.until_unblocked(&cancel).await;
        let open = channel.clone();
        signals.spawn(&tracker, async move {
            worker.handle(delivery, Lane::Redelivered).await;
            drop(open);
        });
    }
    channel
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_while_handling_is_caught_with_its_message() {
        assert_eq!(caught(async { 7 }).await, Ok(7));
        let text: std::result::Result<(), String> = caught(async { panic!("boom {}", 1) }).await;
        assert_eq!(text, Err("boom 1".to_owned()));
        let word: std::result::Result<(), String> = caught(async { panic!("static") }).await;
        assert_eq!(word, Err("static".to_owned()));
    }
}
