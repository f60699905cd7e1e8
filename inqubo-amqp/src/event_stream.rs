//! Lifecycle events as a subscriber receives them: [`EventStream`], and
//! [`event_from_delivery`] for consumers of queues of their own.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use futures_util::Stream;
use inqubo_core::{LifecycleEvent, protocol::header};
use lapin::{Channel, Consumer};
use tracing::warn;

use crate::{
    error::Result,
    wire::{integer_value, string_value},
};

/// Reads a lifecycle event from a message received from the events exchange: its routing
/// key, its `run-id`, `attempt` and `run-generation` headers, and its body. For consumers of queues of their own
/// (a monitor, a harness) that do not go through [`Client::subscribe`](crate::Client::subscribe).
pub fn event_from_delivery(
    delivery: &lapin::message::Delivery,
) -> std::result::Result<LifecycleEvent, inqubo_core::EventDecodeError> {
    let headers = delivery.properties.headers().as_ref();
    let get = |name: &str| headers.and_then(|h| h.inner().get(name));
    let run_id = get(header::RUN_ID).and_then(string_value);
    let number = |name| {
        get(name)
            .and_then(integer_value)
            .and_then(|n| u32::try_from(n).ok())
    };
    let event = LifecycleEvent::from_wire(
        delivery.routing_key.as_str(),
        run_id.as_deref(),
        number(header::ATTEMPT),
        &delivery.data,
    )?;
    Ok(event
        .with_generation(number(header::RUN_GENERATION).unwrap_or(1))
        .with_element(inqubo_core::protocol::Element::from_headers(
            get(header::MAP_INDEX).and_then(integer_value),
            get(header::MAP_SIZE).and_then(integer_value),
        )))
}

/// A live stream of lifecycle events; see [`Client::subscribe`](crate::Client::subscribe).
///
/// Messages on the exchange that are not Inqubo events are skipped with a warning.
pub struct EventStream {
    consumer: Consumer,
    _channel: Channel,
}

impl EventStream {
    /// Events consumed by `consumer`, on `channel` (kept open as long as the stream).
    pub(crate) fn new(consumer: Consumer, channel: Channel) -> Self {
        Self {
            consumer,
            _channel: channel,
        }
    }
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
