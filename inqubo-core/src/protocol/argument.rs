//! Names and values of the `x-` queue arguments Inqubo declares queues with.

/// `quorum` or `classic`.
pub const QUEUE_TYPE: &str = "x-queue-type";
/// How long a message may stay in the queue (ms).
pub const MESSAGE_TTL: &str = "x-message-ttl";
/// Where expired or rejected messages go.
pub const DEAD_LETTER_EXCHANGE: &str = "x-dead-letter-exchange";
/// The routing key dead-lettered messages get.
pub const DEAD_LETTER_ROUTING_KEY: &str = "x-dead-letter-routing-key";
/// `at-least-once` dead-lettering (quorum queues).
pub const DEAD_LETTER_STRATEGY: &str = "x-dead-letter-strategy";
/// What a full queue does (`reject-publish`).
pub const OVERFLOW: &str = "x-overflow";
/// Deliveries after which a quorum queue dead-letters a message.
pub const DELIVERY_LIMIT: &str = "x-delivery-limit";
/// The most messages a queue keeps.
pub const MAX_LENGTH: &str = "x-max-length";
/// One consumer at a time, the others waiting to take over.
pub const SINGLE_ACTIVE_CONSUMER: &str = "x-single-active-consumer";
/// Value of [`QUEUE_TYPE`] for quorum queues.
pub const QUORUM: &str = "quorum";
/// Value of [`DEAD_LETTER_STRATEGY`] for at-least-once dead-lettering.
pub const AT_LEAST_ONCE: &str = "at-least-once";
/// Value of [`OVERFLOW`] that refuses publishes to a full queue.
pub const REJECT_PUBLISH: &str = "reject-publish";
/// How long a stream keeps its messages (`7D`, `12h`...).
pub const MAX_AGE: &str = "x-max-age";
/// Where a stream consumer starts (`first`, `last`, `next`, an offset, or a timestamp).
pub const STREAM_OFFSET: &str = "x-stream-offset";
/// Value of [`QUEUE_TYPE`] for streams.
pub const STREAM: &str = "stream";
/// Value of [`STREAM_OFFSET`] that starts at the oldest message a stream keeps.
pub const FIRST: &str = "first";
