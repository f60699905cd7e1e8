//! The user-facing client: triggers runs and follows their events, without running any step.

use std::sync::Arc;

use futures_util::StreamExt;
use inqubo_core::{
    EventKind, Priority, RoutingKey, RunDuplicateBody, RunId, RunOutcome, WorkflowName, protocol,
};
use lapin::{
    Channel, Consumer,
    options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::{FieldTable, ShortString},
};
use serde::Serialize;
use tracing::instrument;

use crate::{
    error::{Error, Result},
    event_stream::EventStream,
    session::{Connector, Session, split_urls},
    topology::Topology,
    wire::Wire,
};

struct ClientInner {
    connector: Connector,
    topology: Topology,
}

/// Triggers runs and subscribes to lifecycle events. Cheap to clone.
///
/// A client reconnects by itself: after the connection is lost, the next call opens a new
/// one, trying each broker address in turn.
///
/// ```no_run
/// # async fn demo() -> Result<(), inqubo_amqp::Error> {
/// use futures_util::StreamExt;
/// use inqubo_amqp::{Client, DEFAULT_AMQP_URL};
///
/// let client = Client::connect(DEFAULT_AMQP_URL).await?;
/// let simple = "simple".parse()?;
/// let mut events = client.subscribe(Some(&simple)).await?;
/// client.trigger(&simple, "run-42".parse()?, &serde_json::json!({})).await?;
/// while let Some(event) = events.next().await {
///     println!("{}", event?);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("connector", &self.inner.connector)
            .field("topology", &self.inner.topology)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to `url` with the default topology (prefix `inqubo`, quorum queues).
    ///
    /// `url` may list several brokers of one cluster, separated by commas; the client uses
    /// the first that answers and fails over to the others.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, Topology::default()).await
    }

    /// Connects to `url` (one address or several, comma-separated) using `topology`'s names.
    ///
    /// `amqps://` URLs use TLS. The password never appears in errors or logs.
    pub async fn connect_with(url: &str, topology: Topology) -> Result<Self> {
        let client = Self::lazy(split_urls(url), topology);
        client.session().await?;
        Ok(client)
    }

    /// A client that connects on first use.
    pub(crate) fn lazy(urls: Vec<String>, topology: Topology) -> Self {
        Self {
            inner: Arc::new(ClientInner {
                connector: Connector::new(urls),
                topology,
            }),
        }
    }

    /// The names this client uses.
    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// The live session, reconnecting first if there is none.
    pub(crate) async fn session(&self) -> Result<Arc<Session>> {
        self.inner.connector.session().await
    }

    /// Starts a run of `workflow` named `run_id` with `input`, and returns its id once the
    /// broker has confirmed the trigger.
    ///
    /// The run id is the caller's: a business key (`RunId::new("order-42")?`) to recognise
    /// the run by, or [`RunId::random()`] for a fresh one.
    ///
    /// Fails with [`Error::Unroutable`] when no queue listens for the workflow's trigger, that
    /// is when no runner ever declared the workflow under this prefix.
    pub async fn trigger(
        &self,
        workflow: &WorkflowName,
        run_id: RunId,
        input: &impl Serialize,
    ) -> Result<RunId> {
        let body = serde_json::to_vec(input).map_err(Error::Encode)?;
        self.trigger_json(workflow, run_id, body).await
    }

    /// Like [`Client::trigger`], with the input already encoded as JSON.
    #[instrument(skip_all, fields(%workflow, %run_id))]
    pub async fn trigger_json(
        &self,
        workflow: &WorkflowName,
        run_id: RunId,
        input: Vec<u8>,
    ) -> Result<RunId> {
        let trigger = protocol::trigger(workflow, &run_id, input).with_trace(&root_traceparent());
        let trigger = Wire::new(self.inner.topology.names(), trigger, None);
        let session = self.session().await?;
        session.publisher.send(&trigger).await?.wait().await?;
        Ok(run_id)
    }

    /// Like [`Client::trigger`], for a run of priority class `priority` (`run-priority`):
    /// in a workflow built with [`priorities`](inqubo_core::WorkflowBuilder::priorities), its
    /// steps are taken before the backlog of lower classes (see [`Priority`]). Other workflows
    /// run it as `normal`.
    #[instrument(skip_all, fields(%workflow, %run_id, %priority))]
    pub async fn trigger_with_priority(
        &self,
        workflow: &WorkflowName,
        run_id: RunId,
        input: &impl Serialize,
        priority: Priority,
    ) -> Result<RunId> {
        let body = serde_json::to_vec(input).map_err(Error::Encode)?;
        let trigger = protocol::trigger(workflow, &run_id, body)
            .with_trace(&root_traceparent())
            .with_priority(priority);
        let trigger = Wire::new(self.inner.topology.names(), trigger, None);
        let session = self.session().await?;
        session.publisher.send(&trigger).await?.wait().await?;
        Ok(run_id)
    }

    /// Starts a run after `delay` (from a tick of 100 ms up to about 38.8 days,
    /// [`MAX_DELAY`](inqubo_core::protocol::MAX_DELAY)): the trigger waits in the broker's
    /// delay tiers, not in this process, so the run starts even if nothing of the caller is
    /// left by then. Cancelling the run meanwhile ([`Client::cancel`]) keeps it from starting.
    ///
    /// Unlike [`Client::trigger`], it cannot tell a workflow no runner declared: the delay
    /// tiers take any trigger; once the delay is over, the broker drops one nobody takes.
    /// Fails with [`Error::DelayTooLong`] past the longest delay.
    #[instrument(skip_all, fields(%workflow, %run_id, ?delay))]
    pub async fn trigger_after(
        &self,
        workflow: &WorkflowName,
        run_id: RunId,
        input: &impl Serialize,
        delay: std::time::Duration,
    ) -> Result<RunId> {
        if delay > protocol::MAX_DELAY {
            return Err(Error::DelayTooLong {
                delay,
                longest: protocol::MAX_DELAY,
            });
        }
        let body = serde_json::to_vec(input).map_err(Error::Encode)?;
        let trigger = protocol::delayed_trigger(workflow, &run_id, body, delay)
            .with_trace(&root_traceparent());
        let trigger = Wire::new(self.inner.topology.names(), trigger, None);
        let session = self.session().await?;
        session.publisher.send(&trigger).await?.wait().await?;
        Ok(run_id)
    }

    /// Starts a run at `at` (at once if that has passed); see [`Client::trigger_after`].
    pub async fn trigger_at(
        &self,
        workflow: &WorkflowName,
        run_id: RunId,
        input: &impl Serialize,
        at: std::time::SystemTime,
    ) -> Result<RunId> {
        let delay = at
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        self.trigger_after(workflow, run_id, input, delay).await
    }

    /// Starts a run and waits for its end: `<workflow>.run.succeeded` (the last steps'
    /// outputs, keyed by step name), `<workflow>.run.failed` or `<workflow>.run.cancelled`.
    ///
    /// If the run id already has a run (the workflow's runs are unique), no second run
    /// starts: while that run is going, this waits for its end, as if it had started it;
    /// if it has ended, this fails with [`Error::RunExists`].
    ///
    /// Fails with [`Error::RunTimeout`] if the run has not ended after `timeout` (it goes on),
    /// and with [`Error::EventStreamEnded`] if the connection closes first.
    ///
    /// ```no_run
    /// # async fn demo(client: inqubo_amqp::Client) -> Result<(), inqubo_amqp::Error> {
    /// use std::time::Duration;
    /// use inqubo_amqp::RunOutcome;
    /// use inqubo_core::{RunId, WorkflowName};
    ///
    /// let diamond = WorkflowName::new("diamond")?;
    /// let run_id = RunId::new("run-7")?;
    /// match client.trigger_and_wait(&diamond, run_id, &1, Duration::from_secs(30)).await? {
    ///     RunOutcome::Succeeded(outputs) => println!("done: {outputs}"),
    ///     RunOutcome::Failed(failure) => println!("{} failed: {}", failure.step, failure.error),
    ///     _ => {}
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn trigger_and_wait(
        &self,
        workflow: &WorkflowName,
        run_id: RunId,
        input: &impl Serialize,
        timeout: std::time::Duration,
    ) -> Result<RunOutcome> {
        // The outcomes only: a binding that matched the trigger would make a trigger of an
        // unknown workflow routable, and this would wait for nothing.
        let mut events = self
            .subscribe_to_all(
                RoutingKey::run_outcomes(workflow)
                    .iter()
                    .map(RoutingKey::as_str),
            )
            .await?;
        let run_id = self.trigger(workflow, run_id, input).await?;
        let wait = async {
            while let Some(event) = events.next().await {
                let event = event?;
                if event.run_id != run_id {
                    continue;
                }
                match event.kind {
                    EventKind::RunSucceeded => return Ok(RunOutcome::Succeeded(event.body)),
                    EventKind::RunFailed => {
                        let failure =
                            serde_json::from_value(event.body).map_err(|source| Error::Decode {
                                what: "the body of a run.failed event",
                                source,
                            })?;
                        return Ok(RunOutcome::Failed(failure));
                    }
                    EventKind::RunCancelled => {
                        let cancelled =
                            serde_json::from_value(event.body).map_err(|source| Error::Decode {
                                what: "the body of a run.cancelled event",
                                source,
                            })?;
                        return Ok(RunOutcome::Cancelled(cancelled));
                    }
                    EventKind::RunDuplicate => {
                        let duplicate: RunDuplicateBody = serde_json::from_value(event.body)
                            .map_err(|source| Error::Decode {
                                what: "the body of a run.duplicate event",
                                source,
                            })?;
                        // Still running: wait for its end, as if this trigger had started it.
                        if duplicate.state != "running" {
                            return Err(Error::RunExists {
                                run_id: run_id.to_string(),
                                state: duplicate.state,
                                generation: event.generation,
                            });
                        }
                    }
                    _ => {}
                }
            }
            Err(Error::EventStreamEnded)
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| Error::RunTimeout {
                run_id: run_id.to_string(),
                timeout,
            })?
    }

    /// Follows the lifecycle events of `workflow` (or of every workflow) from now on.
    ///
    /// The subscription is a server-named, exclusive queue that the broker deletes when the
    /// stream is dropped; it is bound before this returns, so a run triggered afterwards is
    /// seen from its first event.
    ///
    /// It sees every step event and every run event but triggers (`run.triggered`): bound to
    /// triggers, it would make a trigger of a workflow no runner declared routable, and its
    /// sender would never learn that nobody runs it. Bind `<workflow>.run.triggered` with
    /// [`Client::subscribe_to`] to see triggers anyway.
    pub async fn subscribe(&self, workflow: Option<&WorkflowName>) -> Result<EventStream> {
        self.subscribe_to_all(
            RoutingKey::observed_events(workflow)
                .iter()
                .map(RoutingKey::as_str),
        )
        .await
    }

    /// Follows the events whose routing key matches `binding` (a topic pattern such as
    /// `simple.run.*` or `*.step.*.failed`).
    pub async fn subscribe_to(&self, binding: &str) -> Result<EventStream> {
        self.subscribe_to_all([binding]).await
    }

    /// Follows the events whose routing key matches any of `bindings`, in the order they
    /// were published (one queue for all of them).
    pub async fn subscribe_to_all(
        &self,
        bindings: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Result<EventStream> {
        let channel = self.session().await?.channel().await?;
        let (queue, consumer) = private_queue(&channel).await?;
        for binding in bindings {
            channel
                .queue_bind(
                    queue.clone(),
                    self.inner.topology.exchange().into(),
                    binding.as_ref().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(EventStream::new(consumer, channel))
    }

    /// Closes the connection, if one is open.
    pub async fn close(&self) -> Result<()> {
        self.inner.connector.close().await
    }
}

/// A server-named queue of this channel's own (exclusive, deleted with it), and a consumer of
/// it that needs no acknowledgements: for event subscriptions and answers to requests.
pub(crate) async fn private_queue(channel: &Channel) -> Result<(ShortString, Consumer)> {
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                exclusive: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((queue.name().clone(), consumer))
}

/// The `traceparent` a trigger starts its run's trace with: the caller's current span when
/// OpenTelemetry records it (feature `otel`), so that the run continues the caller's trace;
/// a new trace otherwise.
fn root_traceparent() -> String {
    #[cfg(feature = "otel")]
    if let Some(current) = crate::otel::traceparent_of(&tracing::Span::current()) {
        return current;
    }
    inqubo_core::trace::new_traceparent()
}
