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
    error::{Error, Result},
    publisher::Publisher,
};

/// How long one connection attempt (TCP, TLS and AMQP handshake) may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// The broker address used when none is given: the local RabbitMQ with its default user.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// `url` with its password replaced by `***`, for logs, errors and messages to users; each
/// address of a comma-separated list is redacted.
///
/// ```
/// use inqubo_amqp::redact_url;
///
/// assert_eq!(redact_url("amqps://alice:s3cret@broker:5671/prod"), "amqps://alice:***@broker:5671/prod");
/// assert_eq!(redact_url("amqp://a:x@n1,amqp://a:x@n2"), "amqp://a:***@n1,amqp://a:***@n2");
/// assert_eq!(redact_url("sqlite://inqubo.db"), "sqlite://inqubo.db");
/// ```
pub fn redact_url(url: &str) -> String {
    let addresses: Vec<&str> = url.split(',').collect();
    // A comma inside a password would split it; then the whole text is one address.
    if addresses.iter().all(|a| a.contains("://")) {
        addresses
            .iter()
            .map(|a| redact_address(a))
            .collect::<Vec<_>>()
            .join(",")
    } else {
        redact_address(url)
    }
}

fn redact_address(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// Opens a lapin connection to the first address of `url` (one broker address, or several
/// of one cluster separated by commas) that answers, as [`Client`](crate::Client) and
/// [`Runner`](crate::Runner) do: each attempt is bounded by a timeout, `amqps://` uses TLS,
/// and the password never appears in errors or logs.
///
/// For tools that need a channel of their own (to inspect or purge queues); the client and
/// the runner connect by themselves.
///
/// ```no_run
/// # async fn demo() -> Result<(), inqubo_amqp::Error> {
/// let connection = inqubo_amqp::open_connection("amqp://guest:guest@n1,amqp://guest:guest@n2").await?;
/// let channel = connection.create_channel().await?;
/// # Ok(()) }
/// ```
pub async fn open_connection(url: &str) -> Result<Connection> {
    let (_, connection) = connect_any(&split_urls(url), 0).await?;
    Ok(connection)
}

/// Splits a comma-separated list of broker addresses (`amqp://a:5672,amqp://b:5672`).
pub(crate) fn split_urls(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Two live connections to one broker: one to consume on, and one for the confirm-mode
/// publishing channel. Apart, because the broker blocks a connection that publishes during a
/// memory or disk alarm, and everything else on that connection (acknowledgements, the join
/// journals' reads) would wait with it.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) connection: Arc<Connection>,
    pub(crate) publisher: Publisher,
}

impl Session {
    pub(crate) fn is_alive(&self) -> bool {
        self.connection.status().connected() && self.publisher.is_alive()
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
        // The same broker first, for both.
        let (_, publishing) = connect_any(&self.urls, index).await?;
        let publisher = Publisher::new(Arc::new(publishing)).await?;
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
        if let Err(error) = session.publisher.close().await {
            tracing::debug!(%error, "publishing connection already closed");
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact_url("amqps://alice:s3cr%40t@broker:5671/prod"),
            "amqps://alice:***@broker:5671/prod"
        );
        assert_eq!(
            redact_url("amqp://127.0.0.1:5672/%2f"),
            "amqp://127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("amqp://bob@host/%2f"), "amqp://bob@host/%2f");
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(
            redact_url("postgres://app:pw@db/history"),
            "postgres://app:***@db/history"
        );
    }

    #[test]
    fn every_address_of_a_list_is_redacted() {
        assert_eq!(
            redact_url("amqp://a:one@n1:5672, amqp://b:two@n2:5672"),
            "amqp://a:***@n1:5672, amqp://b:***@n2:5672"
        );
        // A comma in a password does not split the address and leak a piece of it.
        assert_eq!(
            redact_url("amqp://a:pass,word@n1:5672"),
            "amqp://a:***@n1:5672"
        );
    }
}
