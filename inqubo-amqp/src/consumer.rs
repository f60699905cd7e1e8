//! The path of one message: step queue → step → outcome events → ack.
//!
//! For every delivery on a step's queue the runner
//!
//! 1. reads the `run-id` and `retry-attempt` headers (a message without a usable `run-id` is
//!    parked at once, never requeued),
//! 2. publishes `started`,
//! 3. runs the attempt ([`run_attempt`]: decode, call, timeout, catch panics, ask the retry
//!    policy),
//! 4. publishes what the outcome calls for — `succeeded` with the output; or `retrying` plus
//!    the input into the delay tiers; or `failed` plus the input into the parked queue,
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
    AttemptOutcome, EventKind, FailedBody, FailureReason, RunFailedBody, StartedBody, StepContext,
    StepNode, Workflow, WorkflowName, run_attempt,
    trace::{child_traceparent, trace_id},
};
use lapin::{
    Channel, Consumer,
    message::Delivery,
    options::{BasicAckOptions, BasicCancelOptions, BasicNackOptions},
};
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, debug, info_span, warn};

use crate::{
    error::{Error, Result},
    message::{self, AttemptId, Outgoing, Received},
    metric::{self, StepMetrics},
    publisher::Publisher,
    topology::{RUN_JOIN, Topology},
};

/// How long an ack or nack may take. On a connection that is dying (a broker restart) it may
/// never be answered; the attempt's task must not hang on it and keep its place in the
/// runner's in-flight limit. The broker redelivers what was not settled.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long to wait before returning a delivery whose outcome could not be published, so that
/// a broken broker does not turn the runner into a busy loop.
const REQUEUE_BACKOFF: Duration = Duration::from_secs(1);

/// Guards against inputs that must not be run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Redeliveries after which a message is parked instead of run.
    pub(crate) max_redeliveries: u32,
    /// The largest input accepted, in bytes.
    pub(crate) max_input_bytes: usize,
    /// Whether attempts announce themselves with `started`.
    pub(crate) publish_started: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_redeliveries: 5,
            max_input_bytes: 16 * 1024 * 1024,
            publish_started: true,
        }
    }
}

/// Everything needed to run one step's deliveries.
#[derive(Debug)]
pub(crate) struct StepWorker {
    pub(crate) topology: Topology,
    pub(crate) workflow: WorkflowName,
    pub(crate) node: StepNode,
    /// The whole workflow, to know the step's join children and whether runs end here.
    pub(crate) graph: Workflow,
    pub(crate) publisher: Publisher,
    pub(crate) limits: Limits,
    pub(crate) metrics: StepMetrics,
}

impl StepWorker {
    /// Handles one delivery from start to acknowledgement.
    pub(crate) async fn handle(&self, delivery: Delivery) {
        let _in_flight = self.metrics.in_flight();
        let received = Received::from_delivery(&delivery);
        match self.process(&received).await {
            Ok(()) => {
                let ack = delivery.ack(BasicAckOptions::default());
                self.settle("ack", ack).await;
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
                self.settle("nack", delivery.nack(requeue)).await;
            }
        }
    }

    /// Waits (bounded) for an ack or nack; a failure only needs a warning, since the broker
    /// redelivers whatever was not settled.
    async fn settle(
        &self,
        what: &str,
        settling: impl std::future::Future<Output = lapin::Result<bool>>,
    ) {
        match tokio::time::timeout(SETTLE_TIMEOUT, settling).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                warn!(step = %self.node.name(), %error, "{what} failed; the broker will redeliver");
            }
            Err(_) => {
                warn!(step = %self.node.name(), "{what} not answered; the broker will redeliver");
            }
        }
    }

    /// Runs the attempt and publishes its outcome; `Ok` means the delivery may be acked.
    async fn process(&self, received: &Received<'_>) -> Result<()> {
        if let Some(refusal) = self.refuse(received) {
            return self.park(received, refusal).await;
        }
        if received.redelivered && !received.counted_by_broker() {
            // A classic queue does not count redeliveries: send the message round again with
            // our own count, so that a message that keeps crashing its runner is parked.
            let count = received.previous_deliveries();
            warn!(step = %self.node.name(), redeliveries = count, "input redelivered; counting it");
            let again = message::counted_redelivery(
                &self.topology,
                &self.workflow,
                self.node.name(),
                received,
                count,
            );
            return self.publisher.send_all(vec![again]).await;
        }
        let (run_id, attempt) = match (received.run_id(), received.attempt()) {
            (Ok(run_id), Ok(attempt)) => (run_id, attempt),
            (Err(error), _) | (_, Err(error)) => {
                return self.park(received, message::undecodable(error)).await;
            }
        };
        let incoming = received.traceparent();
        let span = info_span!(
            "step",
            trace_id = tracing::field::Empty,
            run_id = %run_id,
            workflow = %self.workflow,
            step = %self.node.name(),
            attempt
        );
        // The span's own traceparent when OpenTelemetry records spans, else a fresh child id.
        #[cfg(feature = "otel")]
        let trace = crate::otel::adopt(&span, incoming.as_deref())
            .unwrap_or_else(|| child_traceparent(incoming.as_deref()));
        #[cfg(not(feature = "otel"))]
        let trace = child_traceparent(incoming.as_deref());
        span.record("trace_id", trace_id(&trace).unwrap_or_default());
        let id = AttemptId {
            topology: &self.topology,
            workflow: &self.workflow,
            step: self.node.name(),
            run_id: &run_id,
            attempt,
            trace: &trace,
        };
        async {
            let started_event = self
                .limits
                .publish_started
                .then(|| id.notice(EventKind::Started, &StartedBody { attempt }));
            let started = match &started_event {
                Some(event) => Some(self.publisher.send(event).await),
                None => None,
            };
            let ctx = StepContext {
                run_id: run_id.clone(),
                workflow: self.workflow.clone(),
                step: self.node.name().clone(),
                attempt,
            };
            self.metrics.started();
            let began = Instant::now();
            let outcome = run_attempt(&self.node, ctx, received.body).await;
            self.metrics.finished(
                began.elapsed(),
                match &outcome {
                    AttemptOutcome::Succeeded { .. } => metric::Outcome::Succeeded,
                    AttemptOutcome::Retry { .. } => metric::Outcome::Retried,
                    _ => metric::Outcome::Failed,
                },
            );
            let published = self.publish_outcome(&id, received, outcome).await;
            let started = match started {
                Some(Ok(confirm)) => confirm.wait().await,
                Some(Err(error)) => Err(error),
                None => Ok(()),
            };
            if let (Err(_), Some(event)) = (started, started_event) {
                self.publisher.send_all(vec![event]).await?;
            }
            match published {
                Err(Error::Unroutable { routing_key, .. }) => {
                    let failure = FailedBody {
                        error: format!("no queue is bound to `{routing_key}`"),
                        attempt,
                        reason: FailureReason::Unroutable,
                    };
                    // `park` publishes the `failed` event and tells the run's end.
                    self.park(received, failure).await
                }
                other => other,
            }
        }
        .instrument(span)
        .await
    }

    /// Why `received` must be parked without running, if it must.
    fn refuse(&self, received: &Received<'_>) -> Option<FailedBody> {
        let attempt = received.attempt().unwrap_or(0);
        if received.body.len() > self.limits.max_input_bytes {
            return Some(FailedBody {
                error: format!(
                    "input is {} bytes, more than the {} accepted",
                    received.body.len(),
                    self.limits.max_input_bytes
                ),
                attempt,
                reason: FailureReason::TooLarge,
            });
        }
        let deliveries = received.previous_deliveries();
        if deliveries > self.limits.max_redeliveries {
            return Some(FailedBody {
                error: format!(
                    "redelivered {deliveries} times without being acknowledged; \
                     its attempts keep killing or disconnecting their runner"
                ),
                attempt,
                reason: FailureReason::RedeliveryLimit,
            });
        }
        None
    }

    async fn publish_outcome(
        &self,
        id: &AttemptId<'_>,
        received: &Received<'_>,
        outcome: AttemptOutcome,
    ) -> Result<()> {
        let attempt = id.attempt;
        let messages = match outcome {
            AttemptOutcome::Succeeded { output } => {
                debug!("succeeded");
                self.success_messages(id, output)
            }
            retry @ AttemptOutcome::Retry { .. } => {
                let Some(mut body) = retry.retrying_body(attempt) else {
                    return Ok(());
                };
                let delay = Duration::from_millis(body.delay_ms);
                let route = self
                    .topology
                    .delay_route(delay, &self.workflow, self.node.name());
                body.delay_ms = u64::try_from(route.delay.as_millis()).unwrap_or(u64::MAX);
                debug!(error = %body.error, delay_ms = body.delay_ms, "retrying");
                vec![
                    id.notice(EventKind::Retrying, &body),
                    id.retry(&route, received.body.to_vec()),
                ]
            }
            failed => {
                let Some(body) = failed.failed_body(attempt) else {
                    return Ok(());
                };
                warn!(error = %body.error, reason = %body.reason, "step failed; input parked");
                self.metrics.parked(body.reason);
                let mut messages = vec![
                    id.notice(EventKind::Failed, &body),
                    message::parked(
                        &self.topology,
                        &self.workflow,
                        self.node.name(),
                        received,
                        &body,
                    ),
                ];
                messages.extend(self.run_failure_notices(id, &body));
                messages
            }
        };
        self.publisher.send_all(messages).await
    }

    /// `succeeded` (which a queue must receive if a plain child listens for it), a piece for
    /// every join child, and the run's end when this is a last step.
    fn success_messages(&self, id: &AttemptId<'_>, output: Vec<u8>) -> Vec<Outgoing> {
        let step = self.node.name();
        let mut plain_children = false;
        let mut messages = Vec::with_capacity(2);
        for child in self.node.children() {
            if self
                .graph
                .step(child.as_str())
                .is_some_and(StepNode::is_join)
            {
                messages.push(message::join_piece(
                    &self.topology,
                    &self.workflow,
                    child.as_str(),
                    id.run_id,
                    step,
                    output.clone(),
                    false,
                ));
            } else {
                plain_children = true;
            }
        }
        if self.node.children().is_empty() {
            messages.push(if self.graph.is_chain() {
                let outputs = message::single_leaf_outputs(step, &output);
                message::run_event(
                    &self.topology,
                    &self.workflow,
                    id.run_id,
                    EventKind::RunSucceeded,
                    outputs,
                )
            } else {
                message::join_piece(
                    &self.topology,
                    &self.workflow,
                    RUN_JOIN,
                    id.run_id,
                    step,
                    output.clone(),
                    false,
                )
            });
        }
        messages.insert(0, id.event(EventKind::Succeeded, output, plain_children));
        messages
            .into_iter()
            .map(|m| m.with_trace(id.trace))
            .collect()
    }

    /// What must learn that this step failed for good: the run's end (at once for a chain,
    /// through the run join otherwise), and every join downstream, which can no longer fire.
    fn run_failure_notices(&self, id: &AttemptId<'_>, failure: &FailedBody) -> Vec<Outgoing> {
        let run_id = id.run_id;
        let body = message::json(&RunFailedBody {
            step: self.node.name().clone(),
            error: failure.error.clone(),
            attempt: failure.attempt,
            reason: failure.reason,
        });
        if self.graph.is_chain() {
            return vec![
                message::run_event(
                    &self.topology,
                    &self.workflow,
                    run_id,
                    EventKind::RunFailed,
                    body,
                )
                .with_trace(id.trace),
            ];
        }
        let step = self.node.name();
        self.graph
            .joins_after(step)
            .into_iter()
            .map(|join| join.name().as_str())
            .chain([RUN_JOIN])
            .map(|join| {
                message::join_piece(
                    &self.topology,
                    &self.workflow,
                    join,
                    run_id,
                    step,
                    body.clone(),
                    true,
                )
                .with_trace(id.trace)
            })
            .collect()
    }

    /// Parks `received` with `failure`, announcing `failed` when the run id is known.
    async fn park(&self, received: &Received<'_>, failure: FailedBody) -> Result<()> {
        self.metrics.parked(failure.reason);
        let parked = message::parked(
            &self.topology,
            &self.workflow,
            self.node.name(),
            received,
            &failure,
        );
        let mut messages = vec![parked];
        match received.run_id_if_valid() {
            Some(run_id) => {
                let trace = child_traceparent(received.traceparent().as_deref());
                let id = AttemptId {
                    topology: &self.topology,
                    workflow: &self.workflow,
                    step: self.node.name(),
                    run_id: &run_id,
                    attempt: failure.attempt,
                    trace: &trace,
                };
                warn!(run_id = %run_id, step = %self.node.name(), reason = %failure.reason, error = %failure.error, "parked");
                messages.push(id.notice(EventKind::Failed, &failure));
                messages.extend(self.run_failure_notices(&id, &failure));
                self.publisher.send_all(messages).await
            }
            None => {
                warn!(step = %self.node.name(), reason = %failure.reason, error = %failure.error, "parked a message without a usable run id");
                self.publisher.send_all(messages).await
            }
        }
    }
}

/// Consumes one step's queue until `cancel` fires or the consumer fails, spawning one task per
/// delivery on `tracker`. `in_flight` bounds the deliveries being handled across the runner.
pub(crate) async fn consume(
    worker: Arc<StepWorker>,
    channel: Channel,
    mut consumer: Consumer,
    cancel: CancellationToken,
    tracker: TaskTracker,
    in_flight: Arc<Semaphore>,
) -> Result<()> {
    let queue = consumer.queue().to_string();
    loop {
        let next = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            next = consumer.next() => next,
        };
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => return Err(error.into()),
            None => return Err(Error::ConsumerStopped { queue }),
        };
        let permit = tokio::select! {
            permit = Arc::clone(&in_flight).acquire_owned() => permit,
            () = cancel.cancelled() => break,
        };
        let Ok(permit) = permit else { break };
        let worker = Arc::clone(&worker);
        tracker.spawn(async move {
            worker.handle(delivery).await;
            drop(permit);
        });
    }
    // Stop new deliveries; unacknowledged ones go back to the queue when the channel closes.
    channel
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await?;
    Ok(())
}
