//! AMQP header names, and the header values Inqubo reads and writes.
//!
//! Only strings, integers and booleans cross the wire as Inqubo headers. A runtime converts
//! [`Headers`] to and from its client library's field table; every other kind of value it
//! meets (a broker's `x-death` array, say) stays in the delivery's own table.

use std::collections::BTreeMap;

// Header names.

/// The run a message belongs to (string). Required on triggers and on every event.
pub const RUN_ID: &str = "run-id";
/// The attempt that produced an event (integer, from 1).
pub const ATTEMPT: &str = "attempt";
/// The run's generation (integer, from 1): one more each time a failed run is resumed. Set
/// on every message of a resumed run; absent means 1. Exactly one terminal event is
/// published per generation.
pub const RUN_GENERATION: &str = "run-generation";
/// On a cancel request to a run join: present (true).
pub const JOIN_CANCEL: &str = "join-cancel";
/// On a request to a run join: where to send the answer (a queue name, for example RabbitMQ's
/// direct reply-to `amq.rabbitmq.reply-to`).
pub const REPLY_TO: &str = "reply-to";
/// On a retry message only: the attempt it starts (integer, from 2).
pub const RETRY_ATTEMPT: &str = "retry-attempt";
/// On a parked message: why it was parked (a [`FailureReason`](crate::FailureReason)).
pub const PARKED_REASON: &str = "parked-reason";
/// On a parked message: the error text.
pub const PARKED_ERROR: &str = "parked-error";
/// On a parked message: the step whose input it was.
pub const PARKED_STEP: &str = "parked-step";
/// On a parked message: the routing key it arrived with.
pub const PARKED_ROUTING_KEY: &str = "parked-routing-key";
/// On a parked message: the attempt that failed (integer).
pub const PARKED_ATTEMPT: &str = "parked-attempt";
/// On an input in a workflow's redelivered queue: how many of its deliveries there started
/// and were never acknowledged, before this copy (integer). Quorum queues add their own
/// `x-delivery-count` for the deliveries of this copy; on classic queues the runner sends the
/// input round again with this count raised.
pub const REDELIVERY_COUNT: &str = "redelivery-count";
/// On a message built from a delivery whose headers were too large to carry on: the
/// headers left out, with their sizes (`x-pad (130011 bytes)`), at most 1,024 bytes.
pub const DROPPED_HEADERS: &str = "dropped-headers";
/// On an input in a workflow's redelivered queue: the step it is the input of.
pub const REDELIVERED_STEP: &str = "redelivered-step";
/// W3C trace context (`00-<trace id>-<span id>-01`): the same trace id on every message
/// of a run.
pub const TRACEPARENT: &str = "traceparent";
/// On a workflow announcement: the workflow's name.
pub const WORKFLOW: &str = "workflow";
/// On a join piece: the parent whose output it carries.
pub const JOIN_PARENT: &str = "join-parent";
/// On a join piece: present (true) when the piece reports a failed run instead.
pub const JOIN_FAILED: &str = "join-failed";
/// On a trigger a first step sends to the run join (unique runs): present (true). The run
/// join starts the run if it does not know it, and publishes `run.duplicate` if it does.
pub const JOIN_BEGIN: &str = "join-begin";
/// On a trigger sent on to the run join: the trigger had been delivered before (true).
pub const TRIGGER_REDELIVERED: &str = "trigger-redelivered";
/// On a join piece a shard sent on to the shard that owns its run (it arrived under a former
/// shard count): present (true). A piece forwarded once is never forwarded again.
pub const JOIN_FORWARDED: &str = "join-forwarded";
/// On a first step's input sent by the run join: the run was admitted as new (true), so the
/// step runs it instead of asking the run join again.
pub const RUN_ADMITTED: &str = "run-admitted";
/// On a join shard's journal record: `batch` or `snapshot`.
pub const JOURNAL_KIND: &str = "journal-kind";
/// On a join shard's journal record: the owner's epoch (integer).
pub const JOURNAL_EPOCH: &str = "journal-epoch";
/// On a join shard's journal record: the batch number within the epoch (integer).
pub const JOURNAL_SEQ: &str = "journal-seq";
/// On a join shard's batch record: the batch's time (milliseconds since the Unix epoch).
pub const JOURNAL_TIME: &str = "journal-time";
/// On a journal snapshot part: which part, from 0 (integer).
pub const JOURNAL_PART: &str = "journal-part";
/// On a journal snapshot part: how many parts the snapshot has (integer).
pub const JOURNAL_PARTS: &str = "journal-parts";
/// On every message of a run triggered with a priority class other than `normal`: `high` or
/// `low` (see [`Priority`](crate::Priority)). Absent means `normal`.
pub const RUN_PRIORITY: &str = "run-priority";
/// On a map element (its input, its events, its join piece, its retries): the element's place
/// in the list its map's parent returned (integer, from 0).
pub const MAP_INDEX: &str = "map-index";
/// On a map element, beside `map-index`: how many elements the list has (integer).
pub const MAP_SIZE: &str = "map-size";
/// Set by quorum queues on a redelivered message: how many times it was returned.
pub const X_DELIVERY_COUNT: &str = "x-delivery-count";

/// One header value.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderValue {
    /// A string (sent as an AMQP long string).
    Text(String),
    /// An integer (sent as a signed 64-bit integer; read from any width).
    Int(i64),
    /// A boolean.
    Bool(bool),
}

impl HeaderValue {
    /// The value as text, if it is text.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            HeaderValue::Text(text) => Some(text),
            _ => None,
        }
    }

    /// The value as an integer, if it is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            HeaderValue::Int(n) => Some(*n),
            _ => None,
        }
    }
}

impl From<&str> for HeaderValue {
    fn from(text: &str) -> Self {
        HeaderValue::Text(text.to_owned())
    }
}

impl From<String> for HeaderValue {
    fn from(text: String) -> Self {
        HeaderValue::Text(text)
    }
}

impl From<u32> for HeaderValue {
    fn from(n: u32) -> Self {
        HeaderValue::Int(i64::from(n))
    }
}

impl From<i64> for HeaderValue {
    fn from(value: i64) -> Self {
        HeaderValue::Int(value)
    }
}

impl From<bool> for HeaderValue {
    fn from(b: bool) -> Self {
        HeaderValue::Bool(b)
    }
}

/// The headers of one message, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(BTreeMap<String, HeaderValue>);

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name` to `value`, replacing any earlier value.
    pub fn insert(&mut self, name: &str, value: impl Into<HeaderValue>) {
        self.0.insert(name.to_owned(), value.into());
    }

    /// `self` with `name` set to `value`.
    #[must_use]
    pub fn with(mut self, name: &str, value: impl Into<HeaderValue>) -> Self {
        self.insert(name, value);
        self
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&HeaderValue> {
        self.0.get(name)
    }

    /// The text value of `name`.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(HeaderValue::as_text)
    }

    /// The integer value of `name`.
    pub fn int(&self, name: &str) -> Option<i64> {
        self.get(name).and_then(HeaderValue::as_int)
    }

    /// Whether `name` is set.
    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// Every header, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &HeaderValue)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Sets every header of `other` on `self`.
    pub fn extend(&mut self, other: &Headers) {
        for (name, value) in other.iter() {
            self.insert(name, value.clone());
        }
    }
}

impl FromIterator<(String, HeaderValue)> for Headers {
    fn from_iter<T: IntoIterator<Item = (String, HeaderValue)>>(iter: T) -> Self {
        Self(iter.into_iter().collect())
    }
}
