//! Publishing with publisher confirms and the mandatory flag.
//!
//! [`Publisher::send`] hands a message to the broker and returns at once with a
//! [`PendingConfirm`]; awaiting it says whether the broker took responsibility for the message.
//! Sending several messages before awaiting any of them pipelines their confirms, which is how
//! a step's outcome events cost one round trip instead of one each.

use lapin::{
    Channel, Confirmation, PublisherConfirm, options::BasicPublishOptions,
    options::ConfirmSelectOptions,
};

use crate::{
    error::{Error, Result},
    message::Outgoing,
};

/// A channel in confirm mode, shared by every task of a runner or client.
#[derive(Debug, Clone)]
pub(crate) struct Publisher {
    channel: Channel,
}

impl Publisher {
    /// Puts `channel` in confirm mode.
    pub(crate) async fn new(channel: Channel) -> Result<Self> {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self { channel })
    }

    /// Sends `message`; await the result to learn whether the broker confirmed it.
    pub(crate) async fn send(&self, message: Outgoing) -> Result<PendingConfirm> {
        let properties = message.properties();
        let confirm = self
            .channel
            .basic_publish(
                message.exchange.as_str().into(),
                message.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: message.mandatory,
                    ..BasicPublishOptions::default()
                },
                &message.body,
                properties,
            )
            .await?;
        Ok(PendingConfirm {
            confirm,
            exchange: message.exchange,
            routing_key: message.routing_key,
        })
    }

    /// Sends every message, then waits for all their confirms.
    pub(crate) async fn send_all(&self, messages: Vec<Outgoing>) -> Result<()> {
        let mut pending = Vec::with_capacity(messages.len());
        for message in messages {
            pending.push(self.send(message).await?);
        }
        for confirm in pending {
            confirm.wait().await?;
        }
        Ok(())
    }
}

/// A published message whose confirm has not been awaited yet.
#[derive(Debug)]
pub(crate) struct PendingConfirm {
    confirm: PublisherConfirm,
    exchange: String,
    routing_key: String,
}

impl PendingConfirm {
    /// Waits for the broker's confirm; a negative confirm or a returned mandatory message is
    /// an error.
    pub(crate) async fn wait(self) -> Result<()> {
        match self.confirm.await? {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_returned)) => Err(Error::Unroutable {
                exchange: self.exchange,
                routing_key: self.routing_key,
            }),
            Confirmation::Nack(_) => Err(Error::Nacked {
                exchange: self.exchange,
                routing_key: self.routing_key,
            }),
        }
    }
}
