//! Connecting to the broker, with errors that say what was tried and what to do.

use anyhow::Context as _;
use inqubo::{Client, Topology};
use lapin::{Channel, Connection};

/// The global options every command needs.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub(crate) url: String,
    pub(crate) prefix: String,
    pub(crate) json: bool,
}

fn hint(url: &str) -> String {
    format!(
        "cannot connect to RabbitMQ at {}; start one with `rabbitmq-server -detached` \
         (or `scripts/quickstart.sh`), or set --amqp-url / AMQP_URL",
        inqubo::redact_url(url)
    )
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
        let connection = inqubo::open_connection(&self.url)
            .await
            .with_context(|| hint(&self.url))?;
        let channel = connection.create_channel().await?;
        Ok((connection, channel))
    }
}
