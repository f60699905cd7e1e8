//! How the protocol's messages become AMQP messages, and deliveries become [`Incoming`]s.
//!
//! What a message *is* (its destination, headers, body, `message_id`) is decided in
//! `inqubo_core::protocol`; this module only translates to and from lapin's types: an
//! [`Outgoing`] into an exchange, a routing key and `BasicProperties` (persistent, JSON, with a
//! `timestamp`), and a lapin `Delivery` into an [`Incoming`].

use std::time::{SystemTime, UNIX_EPOCH};

use inqubo_core::protocol::{self, CONTENT_TYPE, HeaderValue, Headers, Incoming, Names, Outgoing};
use lapin::{
    BasicProperties,
    message::Delivery,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

/// A protocol message ready for lapin's `basic_publish`: for tools that publish Inqubo
/// messages on channels of their own (the CLI's replay, the benchmark).
#[derive(Debug, Clone)]
pub struct Wire {
    /// The exchange to publish to.
    pub exchange: String,
    /// The routing key to publish with.
    pub routing_key: String,
    /// The body.
    pub body: Vec<u8>,
    /// Persistent, JSON, `message_id`, `timestamp` and the headers.
    pub properties: BasicProperties,
    /// Whether to publish with `mandatory`.
    pub mandatory: bool,
}

impl Wire {
    /// `message` addressed under `names`; `received` are the headers of the delivery it
    /// answers, which it starts from if it inherits them.
    pub fn new(names: &Names, message: Outgoing, received: Option<&FieldTable>) -> Self {
        let address = message.address(names);
        let mut table = match (message.inherit_headers, received) {
            (true, Some(received)) => inherited(received),
            _ => FieldTable::default(),
        };
        for (name, value) in message.headers.iter() {
            table.insert(name.into(), amqp_value(value));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from(CONTENT_TYPE))
            // A run id may be 255 bytes: the ids built from it are cut to fit, with a hash.
            .with_message_id(ShortString::from(protocol::fit_message_id(
                message.message_id,
            )))
            .with_timestamp(now)
            .with_headers(table);
        Self {
            exchange: address.exchange,
            routing_key: address.routing_key,
            body: message.body,
            properties,
            mandatory: message.mandatory,
        }
    }

    /// Every message of `messages`, addressed under `names`.
    pub fn all(names: &Names, messages: Vec<Outgoing>, received: Option<&FieldTable>) -> Vec<Self> {
        messages
            .into_iter()
            .map(|m| Self::new(names, m, received))
            .collect()
    }
}

/// The most bytes of inherited headers a message carries: headers travel in one frame (128 KiB
/// on RabbitMQ by default), and a delivery may arrive with nearly that much, to which parking
/// it adds its own. Past this, the largest inherited headers are dropped and named in
/// `dropped-headers`.
pub const MAX_INHERITED_HEADERS: usize = 64 * 1024;

/// The longest `dropped-headers` value.
const MAX_DROPPED_NOTE: usize = 1024;

/// The headers of `received` a new message starts from: all of them but the broker's
/// `x-delivery-count` (a quorum queue keeps the count a message arrives with, and this copy's
/// deliveries are not the new one's), within [`MAX_INHERITED_HEADERS`].
fn inherited(received: &FieldTable) -> FieldTable {
    let mut kept: Vec<(&ShortString, &AMQPValue, usize)> = received
        .inner()
        .iter()
        .filter(|(name, _)| name.as_str() != protocol::header::X_DELIVERY_COUNT)
        .map(|(name, value)| (name, value, name.as_str().len() + 1 + encoded_len(value)))
        .collect();
    let mut total: usize = kept.iter().map(|(_, _, size)| size).sum();
    let mut dropped = Vec::new();
    if total > MAX_INHERITED_HEADERS {
        kept.sort_by_key(|(_, _, size)| std::cmp::Reverse(*size));
        while total > MAX_INHERITED_HEADERS && !kept.is_empty() {
            let (name, _, size) = kept.remove(0);
            total -= size;
            dropped.push(format!("{name} ({size} bytes)"));
        }
    }
    let mut table = FieldTable::default();
    for (name, value, _) in kept {
        table.insert(name.clone(), value.clone());
    }
    if !dropped.is_empty() {
        let mut note = dropped.join(", ");
        if note.len() > MAX_DROPPED_NOTE {
            let mut end = MAX_DROPPED_NOTE;
            while !note.is_char_boundary(end) {
                end -= 1;
            }
            note.truncate(end);
        }
        table.insert(
            protocol::header::DROPPED_HEADERS.into(),
            AMQPValue::LongString(LongString::from(note)),
        );
    }
    table
}

/// About how many bytes `value` takes in a header table (its type tag and content).
fn encoded_len(value: &AMQPValue) -> usize {
    1 + match value {
        AMQPValue::LongString(text) => 4 + text.as_bytes().len(),
        AMQPValue::ShortString(text) => 1 + text.as_str().len(),
        AMQPValue::ByteArray(bytes) => 4 + bytes.as_slice().len(),
        AMQPValue::FieldArray(array) => 4 + array.as_slice().iter().map(encoded_len).sum::<usize>(),
        AMQPValue::FieldTable(table) => {
            4 + table
                .inner()
                .iter()
                .map(|(name, value)| name.as_str().len() + 1 + encoded_len(value))
                .sum::<usize>()
        }
        AMQPValue::DecimalValue(_) => 5,
        _ => 8,
    }
}

fn amqp_value(value: &HeaderValue) -> AMQPValue {
    match value {
        HeaderValue::Text(text) => AMQPValue::LongString(LongString::from(text.as_str())),
        HeaderValue::Int(n) => AMQPValue::LongLongInt(*n),
        HeaderValue::Bool(b) => AMQPValue::Boolean(*b),
        // Every header Inqubo writes is one of the above.
        _ => AMQPValue::Void,
    }
}

/// The headers of `table` that Inqubo can read: strings, integers and booleans.
pub fn headers(table: Option<&FieldTable>) -> Headers {
    let Some(table) = table else {
        return Headers::new();
    };
    table
        .inner()
        .iter()
        .filter_map(|(name, value)| {
            let value = match value {
                AMQPValue::Boolean(b) => HeaderValue::Bool(*b),
                other => match string_value(other) {
                    Some(text) => HeaderValue::Text(text),
                    None => HeaderValue::Int(integer_value(other)?),
                },
            };
            Some((name.as_str().to_owned(), value))
        })
        .collect()
}

/// `delivery` as the engine reads it.
pub fn incoming(delivery: &Delivery) -> Incoming<'_> {
    Incoming {
        routing_key: delivery.routing_key.as_str(),
        redelivered: delivery.redelivered,
        headers: headers(delivery.properties.headers().as_ref()),
        message_id: delivery
            .properties
            .message_id()
            .as_ref()
            .map(ShortString::as_str),
        body: &delivery.data,
    }
}

/// The text of a string header (long or short string, valid UTF-8).
pub fn string_value(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok().map(str::to_owned),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// The value of an integer header of any width.
pub fn integer_value(value: &AMQPValue) -> Option<i64> {
    match *value {
        AMQPValue::ShortShortInt(n) => Some(n.into()),
        AMQPValue::ShortShortUInt(n) => Some(n.into()),
        AMQPValue::ShortInt(n) => Some(n.into()),
        AMQPValue::ShortUInt(n) => Some(n.into()),
        AMQPValue::LongInt(n) => Some(n.into()),
        AMQPValue::LongUInt(n) => Some(n.into()),
        AMQPValue::LongLongInt(n) => Some(n),
        AMQPValue::Timestamp(n) => i64::try_from(n).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use inqubo_core::{
        RunId, WorkflowName,
        protocol::{self, header},
    };

    use super::*;

    #[test]
    fn headers_of_any_width_and_string_kind_are_read() {
        let mut table = FieldTable::default();
        table.insert("run-id".into(), AMQPValue::ShortString("r-2".into()));
        table.insert("retry-attempt".into(), AMQPValue::ShortShortUInt(3));
        table.insert("join-failed".into(), AMQPValue::Boolean(true));
        table.insert("x-death".into(), AMQPValue::FieldArray(Default::default()));
        let read = headers(Some(&table));
        assert_eq!(read.text(header::RUN_ID), Some("r-2"));
        assert_eq!(read.int(header::RETRY_ATTEMPT), Some(3));
        assert_eq!(
            read.get(header::JOIN_FAILED),
            Some(&HeaderValue::Bool(true))
        );
        assert!(!read.contains("x-death"));
    }

    #[test]
    fn inherited_headers_past_their_budget_drop_the_largest_and_say_so() {
        let mut received = FieldTable::default();
        received.insert("run-id".into(), AMQPValue::LongString("r".into()));
        received.insert(
            "x-pad".into(),
            AMQPValue::LongString("p".repeat(130_000).into()),
        );
        received.insert(
            "x-small".into(),
            AMQPValue::LongString("s".repeat(100).into()),
        );
        received.insert("x-delivery-count".into(), AMQPValue::LongLongInt(3));
        let wf = WorkflowName::new("simple").unwrap();
        let run = RunId::new("r").unwrap();
        let mut message = protocol::trigger(&wf, &run, b"{}".to_vec());
        message.inherit_headers = true;
        let wire = Wire::new(&Names::default(), message, Some(&received));
        let table = wire.properties.headers().clone().unwrap();
        let read = headers(Some(&table));
        assert_eq!(read.text("run-id"), Some("r"));
        assert!(read.contains("x-small"));
        assert!(!read.contains("x-pad"));
        assert!(!read.contains("x-delivery-count"));
        assert_eq!(
            read.text(header::DROPPED_HEADERS),
            Some("x-pad (130011 bytes)")
        );
    }

    #[test]
    fn inherited_headers_keep_what_the_delivery_carried() {
        let mut received = FieldTable::default();
        received.insert("x-death".into(), AMQPValue::FieldArray(Default::default()));
        received.insert("run-id".into(), AMQPValue::LongString("r".into()));
        let wf = WorkflowName::new("simple").unwrap();
        let run = RunId::new("r").unwrap();
        let mut message = protocol::trigger(&wf, &run, b"{}".to_vec());
        message.inherit_headers = true;
        let wire = Wire::new(&Names::default(), message, Some(&received));
        let table = wire.properties.headers().clone().unwrap();
        assert!(table.inner().contains_key("x-death"));
        assert_eq!(wire.exchange, "inqubo");
        assert_eq!(wire.routing_key, "simple.run.triggered");
        assert_eq!(wire.properties.delivery_mode(), &Some(2));
        assert_eq!(
            wire.properties
                .message_id()
                .as_ref()
                .map(ShortString::as_str),
            Some("r:simple:triggered")
        );
    }
}
