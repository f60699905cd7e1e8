//! Publishing with publisher confirms and the mandatory flag.
//!
//! [`Publisher::send`] hands a message to the broker and returns at once with a
//! [`PendingConfirm`]; awaiting it says whether the broker took responsibility for the message.
//! Sending several messages before awaiting any of them pipelines their confirms, which is how
//! a step's outcome events cost one round trip instead of one each.

use lapin::{Channel, Connection, options::BasicPublishOptions, options::ConfirmSelectOptions};

use std::{
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use tokio::time::Instant;
use tracing::warn;

use crate::{
    confirm::{Identity, Ledger, Verdict},
    error::{Error, Result},
    wire::Wire,
};

/// How long a refused publish is retried before the delivery is given back to its queue.
const REPUBLISH_PATIENCE: Duration = Duration::from_secs(60);

/// The first wait before publishing a refused message again; it doubles up to
/// [`MAX_REPUBLISH_DELAY`].
const FIRST_REPUBLISH_DELAY: Duration = Duration::from_millis(200);

/// How long a publish may wait for its confirm before it counts as failed (and its delivery
/// goes back to its queue).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a runner whose publishing connection is blocked looks whether it still is.
const BLOCKED_POLL: Duration = Duration::from_millis(100);

/// The longest wait between two publications of a refused message.
const MAX_REPUBLISH_DELAY: Duration = Duration::from_secs(5);

/// How long a publishing channel is kept at least, before a refusal may replace it.
const CHANNEL_RENEWAL_INTERVAL: Duration = Duration::from_secs(5);

/// A channel in confirm mode, shared by every task of a runner or client.
///
/// When the broker keeps refusing publishes, the channel is replaced by a new one (at most
/// every [`CHANNEL_RENEWAL_INTERVAL`]): on RabbitMQ 3.10, a channel whose first contact with a
/// quorum queue failed while a cluster node went down can keep refusing every message for
/// that queue, while a new channel reaches its new leader at once.
#[derive(Debug, Clone)]
pub(crate) struct Publisher {
    connection: Arc<Connection>,
    current: Arc<Mutex<Current>>,
}

/// The channel in use, the ledger of its confirms, and when it was opened.
#[derive(Debug)]
struct Current {
    channel: Channel,
    ledger: Ledger,
    opened: Instant,
}

impl Current {
    fn new(channel: Channel) -> Self {
        Self {
            channel,
            ledger: Ledger::new(),
            opened: Instant::now(),
        }
    }
}

impl Publisher {
    /// Opens a channel on `connection` and puts it in confirm mode.
    pub(crate) async fn new(connection: Arc<Connection>) -> Result<Self> {
        let channel = confirming_channel(&connection).await?;
        Ok(Self {
            connection,
            current: Arc::new(Mutex::new(Current::new(channel))),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The channel to publish on. One the broker closed (a publish to an exchange that was
    /// deleted, a message over its size limit) is replaced at once while the connection
    /// lives: otherwise every later publish of the runner would fail on it.
    async fn channel(&self) -> Result<(Channel, Ledger)> {
        let (channel, ledger) = {
            let current = self.lock();
            (current.channel.clone(), current.ledger.clone())
        };
        let connection = self.connection.status();
        if channel.status().connected() || !connection.connected() || connection.closing() {
            return Ok((channel, ledger));
        }
        // Bounded: on a connection that is going away, the broker may never answer.
        let fresh = tokio::time::timeout(CONFIRM_TIMEOUT, confirming_channel(&self.connection))
            .await
            .map_err(|_| Error::ChannelTimeout {
                timeout: CONFIRM_TIMEOUT,
            })??;
        let mut current = self.lock();
        if !current.channel.status().connected() {
            warn!("the broker closed the publishing channel; publishing on a new one");
            crate::metric::channel_renewed();
            *current = Current::new(fresh);
            Ok((current.channel.clone(), current.ledger.clone()))
        } else {
            // Another task replaced it meanwhile: this one is not needed.
            let replaced = (current.channel.clone(), current.ledger.clone());
            drop(current);
            tokio::spawn(async move {
                let _ = fresh.close(200, "not needed".into()).await;
            });
            Ok(replaced)
        }
    }

    /// Replaces the channel that refused messages by a new one, unless it was opened lately
    /// (another task may just have replaced it).
    async fn renew(&self) -> Result<()> {
        if self.lock().opened.elapsed() < CHANNEL_RENEWAL_INTERVAL {
            return Ok(());
        }
        let fresh = confirming_channel(&self.connection).await?;
        let retired = {
            let mut current = self.lock();
            if current.opened.elapsed() < CHANNEL_RENEWAL_INTERVAL {
                // Another task renewed it while this one opened `fresh`.
                fresh
            } else {
                warn!("the broker keeps refusing messages; publishing on a new channel");
                crate::metric::channel_renewed();
                std::mem::replace(&mut *current, Current::new(fresh)).channel
            }
        };
        // Confirms still pending on the retired channel arrive before its close completes.
        tokio::spawn(async move {
            tokio::time::sleep(CHANNEL_RENEWAL_INTERVAL).await;
            let _ = retired.close(200, "renewed".into()).await;
        });
        Ok(())
    }

    /// Sends `message`; await the result to learn whether the broker confirmed it.
    pub(crate) async fn send(&self, message: &Wire) -> Result<PendingConfirm> {
        let (channel, ledger) = self.channel().await?;
        let sent = std::time::Instant::now();
        let reservation = ledger.reserve();
        let confirm = channel
            .basic_publish(
                message.exchange.as_str().into(),
                message.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: message.mandatory,
                    ..BasicPublishOptions::default()
                },
                &message.body,
                message.properties.clone(),
            )
            .await?;
        let identity = Identity::new(
            &message.exchange,
            &message.routing_key,
            message
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str()),
        );
        Ok(PendingConfirm {
            verdict: reservation.register(identity, confirm),
            exchange: message.exchange.clone(),
            routing_key: message.routing_key.clone(),
            sent,
        })
    }

    /// Whether the connection is still open (a closed channel is replaced on the next send).
    pub(crate) fn is_alive(&self) -> bool {
        self.connection.status().connected()
    }

    /// Whether the broker has blocked the publishing connection (a memory or disk alarm):
    /// nothing published now is confirmed until it lifts the block.
    pub(crate) fn is_blocked(&self) -> bool {
        self.connection.status().blocked()
    }

    /// Waits while the publishing connection is blocked, or until `stop` fires: a runner
    /// that cannot publish an outcome does not start attempts whose outcome it could not
    /// publish. Says so once per block.
    pub(crate) async fn until_unblocked(&self, stop: &tokio_util::sync::CancellationToken) {
        if !self.is_blocked() {
            return;
        }
        warn!(
            "the broker blocked publishing (a resource alarm); no new attempts start until it lifts"
        );
        while self.is_blocked() && !stop.is_cancelled() {
            tokio::select! {
                () = tokio::time::sleep(BLOCKED_POLL) => {}
                () = stop.cancelled() => {}
            }
        }
        if !self.is_blocked() {
            tracing::info!("the broker unblocked publishing; attempts start again");
        }
    }

    /// Closes the publishing connection.
    pub(crate) async fn close(&self) -> lapin::Result<()> {
        self.connection.close(200, "bye".into()).await
    }

    /// Sends every message and waits for their confirms, pipelined in windows of
    /// [`CONFIRM_WINDOW`] (so that a map's fan-out of many thousand inputs does not hold as
    /// many unconfirmed messages at once).
    ///
    /// A message the broker refuses (negative confirm, for example while a quorum queue elects
    /// a new leader) is published again with backoff for up to [`REPUBLISH_PATIENCE`], without
    /// giving up the delivery being handled: returning it to its queue would count as a
    /// redelivery. An unroutable message, or a dead channel, is reported at once.
    pub(crate) async fn send_all(&self, mut messages: Vec<Wire>) -> Result<()> {
        let deadline = Instant::now() + REPUBLISH_PATIENCE;
        let mut delay = FIRST_REPUBLISH_DELAY;
        loop {
            let mut refused = Vec::new();
            let mut last_error = None;
            let mut rest = messages.into_iter().peekable();
            while rest.peek().is_some() {
                let mut pending = Vec::with_capacity(CONFIRM_WINDOW);
                for message in rest.by_ref().take(CONFIRM_WINDOW) {
                    match self.send(&message).await {
                        Ok(confirm) => pending.push((message, confirm)),
                        Err(error) => {
                            refused.push(message);
                            last_error = Some(error);
                        }
                    }
                }
                for (message, confirm) in pending {
                    match confirm.wait().await {
                        Ok(()) => {}
                        Err(error @ Error::Unroutable { .. }) => return Err(error),
                        Err(error) => {
                            refused.push(message);
                            last_error = Some(error);
                        }
                    }
                }
            }
            let Some(error) = last_error else {
                return Ok(());
            };
            if !self.is_alive() || Instant::now() + delay > deadline {
                return Err(error);
            }
            warn!(%error, retry_in = ?delay, "publish not confirmed; publishing again");
            if matches!(error, Error::Nacked { .. }) {
                self.renew().await?;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_REPUBLISH_DELAY);
            messages = refused;
        }
    }
}

/// The most messages [`Publisher::send_all`] has unconfirmed at once.
pub(crate) const CONFIRM_WINDOW: usize = 1024;

/// A new channel on `connection`, in confirm mode.
async fn confirming_channel(connection: &Connection) -> Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// A published message whose confirm has not been awaited yet.
#[derive(Debug)]
pub(crate) struct PendingConfirm {
    verdict: tokio::sync::oneshot::Receiver<Verdict>,
    exchange: String,
    routing_key: String,
    sent: std::time::Instant,
}

impl PendingConfirm {
    /// Waits for the broker's confirm; a negative confirm or a returned mandatory message is
    /// an error. A confirm that does not come in time, or whose ledger stopped (the runtime is
    /// going down), counts as not confirmed.
    pub(crate) async fn wait(self) -> Result<()> {
        // Bounded: on a connection that died after the publish, a confirm may never come.
        let Ok(Ok(verdict)) = tokio::time::timeout(CONFIRM_TIMEOUT, self.verdict).await else {
            return Err(Error::ConfirmTimeout {
                exchange: self.exchange,
                routing_key: self.routing_key,
                timeout: CONFIRM_TIMEOUT,
            });
        };
        match verdict {
            Verdict::Confirmed => {
                crate::metric::confirmed(self.sent.elapsed());
                Ok(())
            }
            Verdict::Returned => Err(Error::Unroutable {
                exchange: self.exchange,
                routing_key: self.routing_key,
            }),
            Verdict::Refused => Err(Error::Nacked {
                exchange: self.exchange,
                routing_key: self.routing_key,
            }),
            Verdict::Failed(error) => Err(error.into()),
        }
    }
}
