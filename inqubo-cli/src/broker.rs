//! Connecting to the broker, with errors that say what was tried and what to do.

use anyhow::Context as _;
use inqubo::{Client, Topology};
use lapin::{Channel, Connection, ConnectionProperties};

/// The global options every command needs.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub(crate) url: String,
    pub(crate) prefix: String,
    pub(crate) json: bool,
}

fn hint(url: &str) -> String {
    let shown = redact(url);
    format!(
        "cannot connect to RabbitMQ at {shown}; start one with `rabbitmq-server -detached` \
         (or `scripts/quickstart.sh`), or set --amqp-url / AMQP_URL"
    )
}

/// `url` without its password.
pub(crate) fn redact(url: &str) -> String {
    match url.split_once("://").and_then(|(scheme, rest)| {
        let (userinfo, host) = rest.rsplit_once('@')?;
        let user = userinfo.split(':').next()?;
        Some(format!("{scheme}://{user}:***@{host}"))
    }) {
        Some(redacted) => redacted,
        None => url.to_owned(),
    }
}

impl Context {
    pub(crate) fn topology(&self) -> anyhow::Result<Topology> {
        Ok(Topology::new(self.prefix.clone(), Default::default())?)
    }

    pub(crate) async fn client(&self) -> anyhow::Result<Client> {
        Client::connect_with(&self.url, self.topology()?)
            .await
            .with_context(|| hint(&self.url))
    }

    /// A raw connection and channel, to the first broker address that answers.
    pub(crate) async fn channel(&self) -> anyhow::Result<(Connection, Channel)> {
        let mut last = None;
        for url in self.url.split(',').map(str::trim) {
            match Connection::connect(url, ConnectionProperties::default()).await {
                Ok(connection) => {
                    let channel = connection.create_channel().await?;
                    return Ok((connection, channel));
                }
                Err(error) => last = Some(anyhow::Error::from(error).context(hint(url))),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no broker address given")))
    }
}
