//! The error type of the AMQP runtime.

use inqubo_core::{NameError, WorkflowError};

/// Anything that can go wrong between Inqubo and RabbitMQ.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The broker could not be reached or refused the login.
    #[error(
        "cannot connect to RabbitMQ at {url} (is it running? `rabbitmq-server -detached` starts a local one)"
    )]
    Connect {
        /// The address tried, with any password removed.
        url: String,
        /// What lapin said.
        #[source]
        source: lapin::Error,
    },
    /// A broker accepted the connection but did not complete the handshake in time (for
    /// example while it is still starting).
    #[error("connecting to RabbitMQ at {url} took longer than {timeout:?}")]
    ConnectTimeout {
        /// The address tried, with any password removed.
        url: String,
        /// How long the attempt was given.
        timeout: std::time::Duration,
    },
    /// A run did not end within the time given to [`Client::trigger_and_wait`](crate::Client::trigger_and_wait).
    #[error("run `{run_id}` did not end within {timeout:?}")]
    RunTimeout {
        /// The run.
        run_id: String,
        /// How long it was given.
        timeout: std::time::Duration,
    },
    /// No broker address was given.
    #[error("no broker address given")]
    NoBrokerAddress,

    /// A delayed trigger asked for a delay past the longest the delay tiers hold.
    #[error("a delay of {delay:?} is past the longest the broker holds ({longest:?})")]
    DelayTooLong {
        /// The delay asked for.
        delay: std::time::Duration,
        /// The longest delay.
        longest: std::time::Duration,
    },

    /// An environment variable holds a value the setting it names cannot take.
    #[error("environment variable {variable}={value:?}: {expected}")]
    Environment {
        /// The variable, e.g. `INQUBO_PREFETCH`.
        variable: &'static str,
        /// What it holds.
        value: String,
        /// What it should hold.
        expected: &'static str,
    },
    /// A broker operation failed (channel or connection error).
    #[error("broker operation failed")]
    Amqp(#[from] lapin::Error),
    /// A queue or exchange already exists with other arguments (for example a classic queue
    /// where a quorum queue is declared).
    #[error(
        "`{name}` already exists on the broker with different arguments; delete it or use another prefix"
    )]
    TopologyMismatch {
        /// The queue or exchange.
        name: String,
        /// What the broker said.
        #[source]
        source: lapin::Error,
    },
    /// A mandatory message matched no queue.
    #[error("no queue is bound to routing key `{routing_key}` on exchange `{exchange}`")]
    Unroutable {
        /// The exchange published to.
        exchange: String,
        /// The routing key that matched nothing.
        routing_key: String,
    },
    /// The broker refused to take responsibility for a message (negative confirm).
    #[error("the broker refused a message for `{routing_key}` on exchange `{exchange}`")]
    Nacked {
        /// The exchange published to.
        exchange: String,
        /// The routing key published with.
        routing_key: String,
    },
    /// The broker did not confirm a message in time (the connection may have died after the
    /// publish, or the broker is blocking publishers).
    #[error(
        "the broker did not confirm a message for `{routing_key}` on exchange `{exchange}` within {timeout:?}"
    )]
    ConfirmTimeout {
        /// The exchange published to.
        exchange: String,
        /// The routing key published with.
        routing_key: String,
        /// How long the confirm was awaited.
        timeout: std::time::Duration,
    },
    /// Reconnecting (declaring the topology, starting the consumers) took too long; another
    /// attempt follows.
    #[error("reconnecting took longer than {timeout:?}")]
    SessionStartTimeout {
        /// How long the attempt was given.
        timeout: std::time::Duration,
    },
    /// The name prefix is unusable.
    #[error("prefix `{0}` must be 1 to 64 ASCII letters, digits, `_`, `-` or `.`")]
    InvalidPrefix(String),
    /// A name or run id was refused.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A workflow was refused.
    #[error(transparent)]
    Workflow(#[from] WorkflowError),
    /// A run input could not be encoded as JSON.
    #[error("run input does not encode as JSON")]
    Encode(#[source] serde_json::Error),
    /// The Prometheus endpoint asked for with `RunnerBuilder::metrics_addr` could not start
    /// (the address is taken, or the process already has a metrics recorder).
    #[cfg(feature = "prometheus")]
    #[error("cannot serve metrics on {addr}")]
    Metrics {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: metrics_exporter_prometheus::BuildError,
    },
    /// A trigger named a run that had already ended (the workflow's runs are unique, and its
    /// run join still remembers the run): no second run was started.
    #[error(
        "run `{run_id}` already exists and has {state} (generation {generation}); no second run was started: resume it if it failed, or trigger a new run id"
    )]
    RunExists {
        /// The run.
        run_id: String,
        /// How it ended: `succeeded`, `failed` or `cancelled`.
        state: String,
        /// The generation that ended.
        generation: u32,
    },
    /// The broker did not open a channel in time (to replace one it had closed).
    #[error("the broker did not open a channel within {timeout:?}")]
    ChannelTimeout {
        /// How long it was given.
        timeout: std::time::Duration,
    },
    /// A run could not be cancelled: it had already ended.
    #[error("run `{run_id}` was not cancelled: it had already {ended}")]
    CancelRefused {
        /// The run.
        run_id: String,
        /// How it ended: `succeeded`, `failed` or `cancelled`.
        ended: String,
    },
    /// No runner answered a cancel request in time. The request stays queued: it takes
    /// effect when a runner of the workflow consumes it.
    #[error(
        "no runner answered the cancel request for run `{run_id}` within {timeout:?}; it stays queued and takes effect when a runner of the workflow starts"
    )]
    CancelUnanswered {
        /// The run.
        run_id: String,
        /// How long the answer was awaited.
        timeout: std::time::Duration,
    },
    /// The broker did not confirm a resume's inputs in time (it may be blocking publishers
    /// on a disk or memory alarm); the parked messages stay parked.
    #[error(
        "the broker did not confirm the resumed inputs of run `{run_id}` within {timeout:?}; they stay parked"
    )]
    ResumeTimeout {
        /// The run.
        run_id: String,
        /// How long the confirms were awaited.
        timeout: std::time::Duration,
    },
    /// A resume found nothing to send back: the run has no parked input.
    #[error(
        "run `{run_id}` has no parked input to resume (was it failed, and not resumed already?)"
    )]
    NothingToResume {
        /// The run.
        run_id: String,
    },
    /// A step consumer stopped because the broker cancelled it or its channel closed.
    #[error("the consumer of queue `{queue}` stopped")]
    ConsumerStopped {
        /// The queue it consumed.
        queue: String,
    },
    /// The broker did not answer an acknowledgement in time (the connection is probably
    /// dying); the deliveries it covered will be redelivered.
    #[error("acknowledging deliveries of queue `{queue}` timed out")]
    AckTimeout {
        /// The queue the deliveries came from.
        queue: String,
    },
    /// A task of the runtime panicked: a bug in Inqubo (a step's own panic is a failed
    /// attempt, not this).
    #[error("the {task} task panicked: {message}")]
    TaskPanicked {
        /// Which task: `runner supervisor` or `queue consumer` (of a step or join queue).
        task: &'static str,
        /// The panic message.
        message: String,
    },
    /// A stream of events ended before the event waited for arrived (its channel or connection
    /// closed).
    #[error("the event stream ended before the run did")]
    EventStreamEnded,
    /// A message from the broker could not be decoded.
    #[error("cannot decode {what}")]
    Decode {
        /// What was being decoded, such as `the body of a run.failed event`.
        what: &'static str,
        /// What the JSON parser said.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// Whether retrying the same operation later (after reconnecting) may succeed.
    ///
    /// Connection and channel failures are transient (a stopped consumer, an unanswered
    /// acknowledgement, an event stream that ended); refused names, mismatched topology,
    /// unroutable messages, undecodable messages and panics are not.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect { source, .. } | Error::Amqp(source) => {
                source.is_io_error() || source.can_be_recovered() || !source.is_amqp_error()
            }
            Error::ConsumerStopped { .. }
            | Error::AckTimeout { .. }
            | Error::EventStreamEnded
            | Error::CancelUnanswered { .. }
            | Error::ResumeTimeout { .. }
            | Error::ConfirmTimeout { .. }
            | Error::ChannelTimeout { .. }
            | Error::SessionStartTimeout { .. }
            | Error::Nacked { .. }
            | Error::ConnectTimeout { .. } => true,
            _ => false,
        }
    }

    /// The error of a task that did not finish: its panic, with the panic message.
    pub(crate) fn task_panicked(task: &'static str, join: tokio::task::JoinError) -> Self {
        let message = match join.try_into_panic() {
            Ok(payload) => payload
                .downcast_ref::<&str>()
                .map(|m| (*m).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_owned()),
            // The runtime never aborts the tasks whose result it reads.
            Err(join) => join.to_string(),
        };
        Error::TaskPanicked { task, message }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicked_task_says_which_and_why() {
        let join = tokio::spawn(async { panic!("boom {}", 7) })
            .await
            .unwrap_err();
        let error = Error::task_panicked("runner supervisor", join);
        assert_eq!(
            error.to_string(),
            "the runner supervisor task panicked: boom 7"
        );
        assert!(!error.is_transient());
        let join = tokio::spawn(async { panic!("static") }).await.unwrap_err();
        assert!(
            Error::task_panicked("queue consumer", join)
                .to_string()
                .ends_with(": static")
        );
    }

    #[test]
    fn messages_do_not_repeat_their_source() {
        let source = serde_json::from_str::<u32>("x").unwrap_err();
        let error = Error::Decode {
            what: "the body of a run.failed event",
            source,
        };
        assert_eq!(
            error.to_string(),
            "cannot decode the body of a run.failed event"
        );
        assert!(!error.is_transient());
        assert!(Error::EventStreamEnded.is_transient());
        assert!(Error::AckTimeout { queue: "q".into() }.is_transient());
    }
}
