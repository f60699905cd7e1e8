//! The connection to the broker: trying each address of a cluster in turn, within a timeout,
//! over TLS for `amqps://` URLs, and the [`Session`] (connection plus confirm-mode publisher)
//! that clients and runners share.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use lapin::{Channel, Connection, ConnectionProperties};
use tracing::{info, warn};

use crate::{
    error::{Error, Result, redact_url},
    publisher::Publisher,
};

/// How long one connection attempt (TCP, TLS and AMQP handshake) may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// The broker address used when none is given: the local RabbitMQ with its default user.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Splits a comma-separated list of broker addresses (`amqp://a:5672,amqp://b:5672`).
pub(crate) fn split_urls(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect()
}

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

/// The broker addresses of one client and the session open on one of them; after the
/// connection is lost, the next [`Connector::session`] opens a new one.
pub(crate) struct Connector {
    urls: Vec<String>,
    current: tokio::sync::Mutex<Option<Arc<Session>>>,
    /// The address to try first: the one that worked last.
    next_url: AtomicUsize,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field(
                "urls",
                &self.urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// A connector that connects on first use.
    pub(crate) fn new(urls: Vec<String>) -> Self {
        Self {
            urls,
            current: tokio::sync::Mutex::new(None),
            next_url: AtomicUsize::new(0),
        }
    }

    /// The live session, reconnecting first if there is none.
    pub(crate) async fn session(&self) -> Result<Arc<Session>> {
        let mut current = self.current.lock().await;
        if let Some(session) = current.as_ref().filter(|s| s.is_alive()) {
            return Ok(Arc::clone(session));
        }
        let start = self.next_url.load(Ordering::Relaxed);
        let (index, connection) = connect_any(&self.urls, start).await?;
        let connection = Arc::new(connection);
        let publisher = Publisher::new(Arc::clone(&connection)).await?;
        self.next_url.store(index, Ordering::Relaxed);
        let session = Arc::new(Session {
            connection,
            publisher,
        });
        *current = Some(Arc::clone(&session));
        Ok(session)
    }

    /// Closes the connection, if one is open.
    pub(crate) async fn close(&self) -> Result<()> {
        let Some(session) = self.current.lock().await.take() else {
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

/// Tries every address of `urls` once, starting at `start`, and returns the index and
/// connection of the first that answers within [`CONNECT_TIMEOUT`]; otherwise the error of
/// the last attempt.
async fn connect_any(urls: &[String], start: usize) -> Result<(usize, Connection)> {
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
                info!(url = %redact_url(url), "connected");
                return Ok((index, connection));
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
