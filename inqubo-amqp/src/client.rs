//! A connection that triggers runs and follows their events, without running any step.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use futures_util::Stream;
use futures_util::StreamExt;
use inqubo_core::{
    EventKind, LifecycleEvent, RoutingKey, RunId, RunOutcome, WorkflowName,
    protocol::{self, header},
};
use lapin::{
    Channel, Connection, ConnectionProperties, Consumer,
    options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use serde::Serialize;
use tracing::{info, instrument, warn};

use crate::{
    error::{Error, Result, redact_url},
    publisher::Publisher,
    topology::Topology,
    wire::{Wire, integer_value, string_value},
};

/// How long one connection attempt (TCP, TLS and AMQP handshake) may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// The broker address used when none is given: the local RabbitMQ with its default user.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// One live connection and its confirm-mode publishing channel.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) connection: Arc<Connection>,
    pub(crate) publisher: Publisher,
}

impl Session {
    pub(crate) fn is_alive(&self) -> bool {
        self.connection.status().connected()
    }

    /// Opens a new channel on this session's connection.
    pub(crate) async fn channel(&self) -> Result<Channel> {
        Ok(self.connection.create_channel().await?)
    }
}

struct ClientInner {
    urls: Vec<String>,
    topology: Topology,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    next_url: AtomicUsize,
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
/// let mut events = client.subscribe(Some(&"simple".parse()?)).await?;
/// let run_id = client.trigger("simple", "run-42", &serde_json::json!({})).await?;
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
            .field(
                "urls",
                &self
                    .inner
                    .urls
                    .iter()
                    .map(|u| redact_url(u))
                    .collect::<Vec<_>>(),
            )
            .field("topology", &self.inner.topology)
            .finish_non_exhaustive()
    }
}

/// Splits a comma-separated list of broker addresses (`amqp://a:5672,amqp://b:5672`).
pub(crate) fn split_urls(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect()
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
                urls,
                topology,
                session: tokio::sync::Mutex::new(None),
                next_url: AtomicUsize::new(0),
            }),
        }
    }

    /// The names this client uses.
    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// The live session, reconnecting first if there is none.
    pub(crate) async fn session(&self) -> Result<Arc<Session>> {
        let mut current = self.inner.session.lock().await;
        if let Some(session) = current.as_ref().filter(|s| s.is_alive()) {
            return Ok(Arc::clone(session));
        }
        let session = Arc::new(self.open_session().await?);
        *current = Some(Arc::clone(&session));
        Ok(session)
    }

    /// Tries every broker address once, starting after the last one that worked.
    async fn open_session(&self) -> Result<Session> {
        let urls = &self.inner.urls;
        let start = self.inner.next_url.load(Ordering::Relaxed);
        let mut last_error = Error::NoBrokerAddress;
        for offset in 0..urls.len() {
            let index = (start + offset) % urls.len();
            let url = &urls[index];
            let attempt = Connection::connect(url, ConnectionProperties::default());
            let Ok(connected) = tokio::time::timeout(CONNECT_TIMEOUT, attempt).await else {
                warn!(url = %redact_url(url), timeout = ?CONNECT_TIMEOUT, "connection attempt timed out");
                last_error = Error::ConnectTimeout {
                    url: redact_url(url),
                    timeout: CONNECT_TIMEOUT,
                };
                continue;
            };
            match connected {
                Ok(connection) => {
                    let connection = Arc::new(connection);
                    let publisher = Publisher::new(Arc::clone(&connection)).await?;
                    self.inner.next_url.store(index, Ordering::Relaxed);
                    info!(url = %redact_url(url), prefix = self.inner.topology.prefix(), "connected");
                    return Ok(Session {
                        connection,
                        publisher,
                    });
                }
                Err(source) => {
                    warn!(url = %redact_url(url), error = %source, "cannot connect");
                    last_error = Error::Connect {
                        url: redact_url(url),
                        source,
                    };
                }
            }
        }
        Err(last_error)
    }

    /// Starts a run of `workflow` named `run_id` with `input`, and returns once the broker has
    /// confirmed the trigger.
    ///
    /// Fails with [`Error::Unroutable`] when no queue listens for the workflow's trigger, that
    /// is when no runner ever declared the workflow under this prefix.
    pub async fn trigger(
        &self,
        workflow: &str,
        run_id: impl Into<String>,
        input: &impl Serialize,
    ) -> Result<RunId> {
        let body = serde_json::to_vec(input).map_err(Error::Encode)?;
        self.trigger_json(workflow, run_id, body).await
    }

    /// Like [`Client::trigger`], with the input already encoded as JSON.
    #[instrument(skip_all, fields(workflow, run_id = tracing::field::Empty))]
    pub async fn trigger_json(
        &self,
        workflow: &str,
        run_id: impl Into<String>,
        input: Vec<u8>,
    ) -> Result<RunId> {
        let workflow = WorkflowName::new(workflow)?;
        let run_id = RunId::new(run_id)?;
        tracing::Span::current().record("run_id", tracing::field::display(&run_id));
        let trigger = protocol::trigger(&workflow, &run_id, input).with_trace(&root_traceparent());
        let trigger = Wire::new(self.inner.topology.names(), trigger, None);
        let session = self.session().await?;
        session.publisher.send(&trigger).await?.wait().await?;
        Ok(run_id)
    }

    /// Starts a run and waits for its end: `<workflow>.run.succeeded` (the last steps'
    /// outputs, keyed by step name) or `<workflow>.run.failed`.
    ///
    /// ```no_run
    /// # async fn demo(client: inqubo_amqp::Client) -> Result<(), inqubo_amqp::Error> {
    /// use std::time::Duration;
    /// use inqubo_amqp::RunOutcome;
    ///
    /// match client.trigger_and_wait("diamond", "run-7", &1, Duration::from_secs(30)).await? {
    ///     RunOutcome::Succeeded(outputs) => println!("done: {outputs}"),
    ///     RunOutcome::Failed(failure) => println!("{} failed: {}", failure.step, failure.error),
    ///     _ => {}
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn trigger_and_wait(
        &self,
        workflow: &str,
        run_id: impl Into<String>,
        input: &impl Serialize,
        timeout: std::time::Duration,
    ) -> Result<RunOutcome> {
        let name = WorkflowName::new(workflow)?;
        let mut events = self
            .subscribe_to(RoutingKey::run_events(&name).as_str())
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
                        let failure = serde_json::from_value(event.body).map_err(Error::Encode)?;
                        return Ok(RunOutcome::Failed(failure));
                    }
                    _ => {}
                }
            }
            Err(Error::ConsumerStopped {
                queue: "run events".into(),
            })
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
    pub async fn subscribe(&self, workflow: Option<&WorkflowName>) -> Result<EventStream> {
        self.subscribe_to(RoutingKey::all_events(workflow).as_str())
            .await
    }

    /// Follows the events whose routing key matches `binding` (a topic pattern such as
    /// `simple.run.*` or `*.step.*.failed`).
    pub async fn subscribe_to(&self, binding: &str) -> Result<EventStream> {
        let channel = self.session().await?.channel().await?;
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
        channel
            .queue_bind(
                queue.name().clone(),
                self.inner.topology.exchange().into(),
                binding.into(),
                QueueBindOptions::default(),
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
        Ok(EventStream {
            consumer,
            _channel: channel,
        })
    }

    /// Closes the connection, if one is open.
    pub async fn close(&self) -> Result<()> {
        let Some(session) = self.inner.session.lock().await.take() else {
            return Ok(());
        };
        match session.connection.close(200, "bye".into()).await {
            // A channel whose last handle was just dropped is already closing on its own;
            // the connection still closes.
            Err(error) if matches!(error.kind(), lapin::ErrorKind::InvalidChannelState(..)) => {
                Ok(())
            }
            Err(error) if !session.is_alive() => {
                tracing::debug!(%error, "connection already closed");
                Ok(())
            }
            other => Ok(other?),
        }
    }
}

/// Reads a lifecycle event from a message received from the events exchange: its routing
/// key, its `run-id` and `attempt` headers, and its body. For consumers of queues of their own
/// (a monitor, a harness) that do not go through [`Client::subscribe`].
pub fn event_from_delivery(
    delivery: &lapin::message::Delivery,
) -> std::result::Result<LifecycleEvent, inqubo_core::EventDecodeError> {
    let headers = delivery.properties.headers().as_ref();
    let get = |name: &str| headers.and_then(|h| h.inner().get(name));
    let run_id = get(header::RUN_ID).and_then(string_value);
    let attempt = get(header::ATTEMPT)
        .and_then(integer_value)
        .and_then(|n| u32::try_from(n).ok());
    LifecycleEvent::from_wire(
        delivery.routing_key.as_str(),
        run_id.as_deref(),
        attempt,
        &delivery.data,
    )
}

/// A live stream of lifecycle events; see [`Client::subscribe`].
///
/// Messages on the exchange that are not Inqubo events are skipped with a warning.
pub struct EventStream {
    consumer: Consumer,
    _channel: Channel,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("queue", &self.consumer.queue())
            .finish()
    }
}

impl Stream for EventStream {
    type Item = Result<LifecycleEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let delivery = match Pin::new(&mut self.consumer).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error.into()))),
                Poll::Ready(Some(Ok(delivery))) => delivery,
            };
            match event_from_delivery(&delivery) {
                Ok(event) => return Poll::Ready(Some(Ok(event))),
                Err(error) => warn!(%error, "skipped a message that is not an inqubo event"),
            }
        }
    }
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
