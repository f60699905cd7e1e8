//! A delivery as Inqubo reads it: routing key, headers, `message_id`, body.

use crate::{
    name::{NameError, RunId},
    protocol::Element,
    protocol::header::{self, Headers},
};

/// Why a header of a delivery cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The header is missing.
    #[error("missing `{0}` header")]
    Missing(&'static str),
    /// The header is not a UTF-8 string.
    #[error("`{0}` header is not a string")]
    NotText(&'static str),
    /// The header is not a positive integer.
    #[error("`{0}` header is not a positive integer")]
    NotPositive(&'static str),
    /// The `run-id` header is not a valid run id.
    #[error("invalid `run-id` header")]
    InvalidRunId(#[source] NameError),
}

/// A delivery from one of Inqubo's queues.
#[derive(Debug, Clone)]
pub struct Incoming<'a> {
    /// The routing key it was published with.
    pub routing_key: &'a str,
    /// Whether the broker delivered it before without an acknowledgement.
    pub redelivered: bool,
    /// Its headers (strings, integers and booleans only).
    pub headers: Headers,
    /// Its `message_id` property.
    pub message_id: Option<&'a str>,
    /// Its body.
    pub body: &'a [u8],
}

impl Incoming<'_> {
    /// The run id, or why there is none.
    pub fn run_id(&self) -> Result<RunId, HeaderError> {
        let value = self
            .headers
            .get(header::RUN_ID)
            .ok_or(HeaderError::Missing(header::RUN_ID))?;
        let text = value
            .as_text()
            .ok_or(HeaderError::NotText(header::RUN_ID))?;
        RunId::new(text).map_err(HeaderError::InvalidRunId)
    }

    /// The attempt this delivery starts: `retry-attempt` on retries, 1 otherwise.
    pub fn attempt(&self) -> Result<u32, HeaderError> {
        match self.headers.get(header::RETRY_ATTEMPT) {
            None => Ok(1),
            Some(value) => value
                .as_int()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n >= 1)
                .ok_or(HeaderError::NotPositive(header::RETRY_ATTEMPT)),
        }
    }

    /// The run generation the message belongs to: `run-generation`, 1 when absent or unusable.
    pub fn generation(&self) -> u32 {
        self.headers
            .int(header::RUN_GENERATION)
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n >= 1)
            .unwrap_or(1)
    }

    /// The run's priority class: `run-priority`, `normal` when absent or unknown.
    pub fn priority(&self) -> crate::Priority {
        self.headers
            .text(header::RUN_PRIORITY)
            .and_then(|text| text.parse().ok())
            .unwrap_or_default()
    }

    /// The map element this message is, if it is one: `map-index` and `map-size`, both
    /// present, with the index below the size.
    pub fn element(&self) -> Option<Element> {
        Element::from_headers(
            self.headers.int(header::MAP_INDEX),
            self.headers.int(header::MAP_SIZE),
        )
    }

    /// How many times the broker delivered this copy before without an acknowledgement:
    /// `x-delivery-count` on quorum queues; on classic queues, which do not count, one if
    /// this delivery is a redelivery.
    pub fn returned(&self) -> u32 {
        match self.int(header::X_DELIVERY_COUNT) {
            Some(count) => count,
            None => u32::from(self.redelivered),
        }
    }

    /// The `redelivery-count` this copy carries: deliveries of earlier copies that started
    /// and were never acknowledged.
    pub fn carried_redeliveries(&self) -> u32 {
        self.int(header::REDELIVERY_COUNT).unwrap_or(0)
    }

    /// Whether the broker counts redeliveries of this message itself (quorum queues).
    pub fn counted_by_broker(&self) -> bool {
        self.headers.contains(header::X_DELIVERY_COUNT)
    }

    fn int(&self, name: &str) -> Option<u32> {
        self.headers.int(name).and_then(|n| u32::try_from(n).ok())
    }

    /// The `traceparent` the delivery carries, if any.
    pub fn traceparent(&self) -> Option<&str> {
        self.headers.text(header::TRACEPARENT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::HeaderValue;

    fn incoming(headers: Headers) -> Incoming<'static> {
        Incoming {
            routing_key: "wf.run.triggered",
            redelivered: false,
            headers,
            message_id: None,
            body: b"{}",
        }
    }

    #[test]
    fn broken_run_ids_say_what_is_wrong() {
        assert_eq!(
            incoming(Headers::new()).run_id().unwrap_err().to_string(),
            "missing `run-id` header"
        );
        let number = Headers::new().with(header::RUN_ID, HeaderValue::Int(7));
        assert_eq!(
            incoming(number).run_id().unwrap_err().to_string(),
            "`run-id` header is not a string"
        );
        let empty = Headers::new().with(header::RUN_ID, "");
        assert!(matches!(
            incoming(empty).run_id(),
            Err(HeaderError::InvalidRunId(_))
        ));
        let fine = Headers::new().with(header::RUN_ID, "r-1");
        assert_eq!(incoming(fine).run_id().unwrap().as_str(), "r-1");
    }

    #[test]
    fn attempt_defaults_to_one_and_must_be_positive() {
        assert_eq!(incoming(Headers::new()).attempt(), Ok(1));
        let three = Headers::new().with(header::RETRY_ATTEMPT, 3_u32);
        assert_eq!(incoming(three).attempt(), Ok(3));
        let zero = Headers::new().with(header::RETRY_ATTEMPT, 0_u32);
        assert!(incoming(zero).attempt().is_err());
        let text = Headers::new().with(header::RETRY_ATTEMPT, "2");
        assert!(incoming(text).attempt().is_err());
    }

    #[test]
    fn returns_come_from_the_broker_count_or_the_redelivered_flag() {
        assert_eq!(incoming(Headers::new()).returned(), 0);
        let mut redelivered = incoming(Headers::new());
        redelivered.redelivered = true;
        assert_eq!(redelivered.returned(), 1);
        let mut counted = incoming(Headers::new().with(header::REDELIVERY_COUNT, 3_u32));
        counted.redelivered = true;
        assert_eq!((counted.carried_redeliveries(), counted.returned()), (3, 1));
        assert!(!counted.counted_by_broker());
        let mut quorum = incoming(
            Headers::new()
                .with(header::REDELIVERY_COUNT, 3_u32)
                .with(header::X_DELIVERY_COUNT, 2_u32),
        );
        quorum.redelivered = true;
        assert_eq!((quorum.carried_redeliveries(), quorum.returned()), (3, 2));
        assert!(quorum.counted_by_broker());
    }
}
