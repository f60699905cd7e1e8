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

/// Takes every message ready in `queue` without acknowledging it (closing the channel, or
/// [`give_back`], returns them).
pub(crate) async fn take_all(
    channel: &Channel,
    queue: &str,
) -> anyhow::Result<Vec<lapin::message::Delivery>> {
    let mut taken = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), lapin::options::BasicGetOptions::default())
        .await?
    {
        taken.push(message.delivery);
    }
    Ok(taken)
}

/// Returns `deliveries` to their queue, in the order given. (Closing the channel would
/// return them too, and does if this fails.)
pub(crate) async fn give_back<'a>(
    deliveries: impl IntoIterator<Item = &'a lapin::message::Delivery>,
) -> anyhow::Result<()> {
    for delivery in deliveries {
        delivery
            .nack(lapin::options::BasicNackOptions {
                requeue: true,
                ..lapin::options::BasicNackOptions::default()
            })
            .await?;
    }
    Ok(())
}

/// Asks `question` on stderr and reads the answer from stdin: `true` for `y` or `yes`. No
/// answer (stdin closed or empty) is no.
pub(crate) fn ask(question: &str) -> anyhow::Result<bool> {
    use std::io::{BufRead, Write};
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}
