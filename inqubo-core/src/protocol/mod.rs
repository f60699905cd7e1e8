//! The wire protocol in code: names, routing keys, headers, and every message Inqubo
//! publishes or reads.
//!
//! `docs/protocol.md` is the contract; this module is its single source. The runtime, the
//! in-process harness, the command line, the chaos harness and the benchmark all build their
//! names, keys, headers and messages here, so they cannot drift apart.
//!
//! | module | what it holds |
//! |---|---|
//! | [`Names`] | exchanges, queues and delay routes, from `(prefix, workflow, step)` |
//! | [`RoutingKey`] | keys and binding patterns on the events exchange |
//! | [`header`], [`argument`] | header and queue argument names; [`Headers`] |
//! | [`Outgoing`] and its constructors | every message published, with its [`Destination`] |
//! | [`Incoming`] | a delivery, and what its headers say |

mod incoming;
mod join_shard;
mod key;
mod lifecycle;
mod map;
mod names;
mod outgoing;
mod set_aside;

pub mod argument;
pub mod header;

pub use header::{HeaderValue, Headers};
pub use incoming::{HeaderError, Incoming};
pub use join_shard::{
    admitted, forwarded_piece, join_piece, joined_input, journal_record, lane_input, run_begin,
};
pub use key::RoutingKey;
pub use lifecycle::{
    CancelReply, cancel_reply, cancel_request, next_generation, resume, resume_run, run_resumed,
};
pub use map::{Element, FanOut, MAX_MAP_ELEMENTS, SplitError, element_piece, map_elements};
pub use names::{
    DelayRoute, JOIN_SHARDS, JOIN_SLOTS, JOIN_STATE_SLOTS, MAX_PREFIX_LEN, Names, PrefixError,
    QueueName, RUN_JOIN,
};
pub use outgoing::{
    Address, AttemptId, Destination, MAX_MESSAGE_ID_LEN, Outgoing, announcement, announcement_of,
    delayed_trigger, fit_message_id, json, run_event, run_failed, scheduler_probe, trigger,
};
pub use set_aside::{MAX_ERROR_HEADER_LEN, cut_error, parked, recounted, redelivered, unstarted};

/// The default prefix: the name of the topic exchange and the first word of every queue name.
pub const DEFAULT_PREFIX: &str = "inqubo";

/// The resolution of retry delays: every delay is rounded up to a multiple of this.
pub const DELAY_TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// Number of retry delay tiers; delays are at most `2^DELAY_TIERS - 1` ticks.
pub const DELAY_TIERS: u32 = 25;

/// The longest retry delay; longer ones are shortened to it (about 38.8 days).
pub const MAX_DELAY: std::time::Duration =
    std::time::Duration::from_millis(100 * ((1 << DELAY_TIERS) - 1));

/// `delay` in whole ticks, rounded up and capped at the longest delay.
pub fn delay_ticks(delay: std::time::Duration) -> u64 {
    let ticks = delay.as_nanos().div_ceil(DELAY_TICK.as_nanos());
    u64::try_from(ticks)
        .unwrap_or(u64::MAX)
        .min((1 << DELAY_TIERS) - 1)
}

/// The delay a retry actually waits for a requested `delay`: rounded up to [`DELAY_TICK`],
/// capped at [`MAX_DELAY`]. Every runtime applies it, and `retrying` events report it.
pub fn effective_delay(delay: std::time::Duration) -> std::time::Duration {
    DELAY_TICK * u32::try_from(delay_ticks(delay)).unwrap_or(u32::MAX)
}

/// The content type of every Inqubo message body.
pub const CONTENT_TYPE: &str = "application/json";

/// On quorum queues, the broker dead-letters a step's input into the parked queue after this
/// many deliveries. Runners park such inputs themselves much earlier (see
/// [`Limits::max_redeliveries`](crate::engine::Limits)); this is the safety net for a runner
/// that dies before it can even read the message.
pub const BROKER_DELIVERY_LIMIT: i64 = 20;
