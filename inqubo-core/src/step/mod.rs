//! Steps: the atomic units of a workflow.
//!
//! A step is a plain `async fn(input, StepContext) -> Result<Output, StepError>` where the input
//! deserialises from JSON and the output serialises to JSON. [`Step::new`] names it and gives it
//! a retry policy; the workflow builder checks that each step's input type is its parent's
//! output type.

use std::{fmt, future::Future, marker::PhantomData, pin::Pin, sync::Arc, time::Duration};

use serde::{Serialize, de::DeserializeOwned};

use crate::retry::RetryPolicy;

mod context;
mod error;

pub use context::StepContext;
pub use error::StepError;

/// How long a step attempt may run before it counts as failed, unless the step sets its own.
///
/// Well below RabbitMQ's default consumer timeout of 30 minutes, after which the broker would
/// close the channel holding the unacknowledged input.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// The longest timeout a step may set: below RabbitMQ's default consumer timeout of 30
/// minutes, with room for publishing the outcome, so that an attempt always gives up before
/// the broker takes its input back. [`WorkflowBuilder::build`](crate::WorkflowBuilder::build)
/// refuses a longer one ([`WorkflowError::TimeoutTooLong`](crate::WorkflowError::TimeoutTooLong)).
pub const MAX_STEP_TIMEOUT: Duration = Duration::from_secs(25 * 60);

/// A boxed, sendable future, as returned by type-erased steps.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// An async function usable as a step: `async fn(I, StepContext) -> Result<O, StepError>`.
///
/// Implemented for every such function and closure; you never implement it yourself.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a step function",
    label = "expected `async fn(input: {I}, ctx: StepContext) -> Result<{O}, StepError>`",
    note = "a step takes its input (a `serde::de::DeserializeOwned` type) and a `StepContext`, \
            and returns a `Send` future of `Result<Output, StepError>` where the output is \
            `serde::Serialize`"
)]
pub trait StepFn<I, O>: Send + Sync + 'static {
    /// The future of one attempt.
    type Future: Future<Output = Result<O, StepError>> + Send + 'static;

    /// Starts one attempt.
    fn call(&self, input: I, ctx: StepContext) -> Self::Future;
}

impl<F, Fut, I, O> StepFn<I, O> for F
where
    F: Fn(I, StepContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, StepError>> + Send + 'static,
{
    type Future = Fut;

    fn call(&self, input: I, ctx: StepContext) -> Fut {
        self(input, ctx)
    }
}

/// Why a step could not start: its input did not decode to the step's input type.
#[derive(Debug, thiserror::Error)]
#[error("input does not decode as {expected}: {source}")]
pub struct DecodeError {
    /// The Rust type the step expects.
    pub expected: &'static str,
    /// What serde said.
    #[source]
    pub source: serde_json::Error,
}

/// A step with its types erased: JSON bytes in, JSON bytes out.
pub(crate) trait ErasedStep: Send + Sync + 'static {
    /// Decodes `input` and starts one attempt.
    fn start(
        &self,
        input: &[u8],
        ctx: StepContext,
    ) -> Result<BoxFuture<Result<Vec<u8>, StepError>>, DecodeError>;
}

struct AsyncStep<F, I, O> {
    function: F,
    _types: PhantomData<fn(I) -> O>,
}

impl<F, I, O> ErasedStep for AsyncStep<F, I, O>
where
    F: StepFn<I, O>,
    I: DeserializeOwned + 'static,
    O: Serialize + 'static,
{
    fn start(
        &self,
        input: &[u8],
        ctx: StepContext,
    ) -> Result<BoxFuture<Result<Vec<u8>, StepError>>, DecodeError> {
        let input: I = decode_input(input)?;
        let attempt = self.function.call(input, ctx);
        Ok(Box::pin(async move { encode_output(&attempt.await?) }))
    }
}

struct BlockingStep<F, I, O> {
    function: Arc<F>,
    _types: PhantomData<fn(I) -> O>,
}

impl<F, I, O> ErasedStep for BlockingStep<F, I, O>
where
    F: Fn(I, StepContext) -> Result<O, StepError> + Send + Sync + 'static,
    I: DeserializeOwned + Send + 'static,
    O: Serialize + Send + 'static,
{
    fn start(
        &self,
        input: &[u8],
        ctx: StepContext,
    ) -> Result<BoxFuture<Result<Vec<u8>, StepError>>, DecodeError> {
        let input: I = decode_input(input)?;
        let function = Arc::clone(&self.function);
        Ok(Box::pin(async move {
            let output = tokio::task::spawn_blocking(move || function(input, ctx))
                .await
                .map_err(|join| StepError::retryable(format!("blocking step failed: {join}")))??;
            encode_output(&output)
        }))
    }
}

/// `input` decoded as a step's input type `I`.
fn decode_input<I: DeserializeOwned>(input: &[u8]) -> Result<I, DecodeError> {
    serde_json::from_slice(input).map_err(|source| DecodeError {
        expected: std::any::type_name::<I>(),
        source,
    })
}

fn encode_output<O: Serialize>(output: &O) -> Result<Vec<u8>, StepError> {
    serde_json::to_vec(output)
        .map_err(|e| StepError::fatal(format!("step output does not encode as JSON: {e}")))
}

/// The untyped parts of a step, kept by the workflow graph.
#[derive(Clone)]
pub(crate) struct StepSpec {
    pub(crate) name: String,
    pub(crate) handler: Arc<dyn ErasedStep>,
    pub(crate) retry: RetryPolicy,
    pub(crate) timeout: Duration,
    /// At most this many attempts of the step at once in one runner process.
    pub(crate) concurrency: Option<std::num::NonZeroU16>,
    /// At most this many attempts of the step at once across every runner.
    pub(crate) fleet_concurrency: Option<std::num::NonZeroU16>,
    /// At most this many attempts of the step start per second across every runner.
    pub(crate) fleet_rate: Option<std::num::NonZeroU32>,
    pub(crate) input_type: &'static str,
    pub(crate) output_type: &'static str,
}

/// A named step taking `I` and producing `O`, ready to be placed in a workflow.
///
/// ```
/// use std::time::Duration;
/// use inqubo_core::{RetryPolicy, Step, StepContext, StepError};
///
/// async fn double(n: u64, _ctx: StepContext) -> Result<u64, StepError> {
///     Ok(n * 2)
/// }
///
/// let step = Step::new("double", double)
///     .retry(RetryPolicy::limited(5, Duration::from_secs(2)))
///     .timeout(Duration::from_secs(30));
/// assert_eq!(step.name(), "double");
/// ```
pub struct Step<I, O> {
    pub(crate) spec: StepSpec,
    _types: PhantomData<fn(I) -> O>,
}

impl<I, O> Clone for Step<I, O> {
    fn clone(&self) -> Self {
        Self {
            spec: self.spec.clone(),
            _types: PhantomData,
        }
    }
}

impl<I, O> fmt::Debug for Step<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Step")
            .field("name", &self.spec.name)
            .field("input", &self.spec.input_type)
            .field("output", &self.spec.output_type)
            .field("retry", &self.spec.retry.spec())
            .field("timeout", &self.spec.timeout)
            .finish()
    }
}

impl<I, O> Step<I, O>
where
    I: DeserializeOwned + Send + 'static,
    O: Serialize + Send + 'static,
{
    /// A step named `name` running the async function `function`.
    ///
    /// The name is checked when the workflow is built: ASCII letters, digits, `_` and `-`,
    /// starting with a letter, at most 64 characters.
    pub fn new<F>(name: impl Into<String>, function: F) -> Self
    where
        F: StepFn<I, O>,
    {
        Self::from_handler(
            name.into(),
            Arc::new(AsyncStep {
                function,
                _types: PhantomData,
            }),
        )
    }

    /// A step running a synchronous function on tokio's blocking thread pool, so that
    /// CPU-heavy or blocking work does not stall the runner.
    pub fn blocking<F>(name: impl Into<String>, function: F) -> Self
    where
        F: Fn(I, StepContext) -> Result<O, StepError> + Send + Sync + 'static,
    {
        Self::from_handler(
            name.into(),
            Arc::new(BlockingStep {
                function: Arc::new(function),
                _types: PhantomData,
            }),
        )
    }

    fn from_handler(name: String, handler: Arc<dyn ErasedStep>) -> Self {
        Self {
            spec: StepSpec {
                name,
                handler,
                retry: RetryPolicy::default(),
                timeout: DEFAULT_STEP_TIMEOUT,
                concurrency: None,
                fleet_concurrency: None,
                fleet_rate: None,
                input_type: std::any::type_name::<I>(),
                output_type: std::any::type_name::<O>(),
            },
            _types: PhantomData,
        }
    }
}

impl<I, O> Step<I, O> {
    /// Sets the retry policy (default: 3 retries, 1 second apart).
    #[must_use]
    pub fn retry(mut self, policy: impl Into<RetryPolicy>) -> Self {
        self.spec.retry = policy.into();
        self
    }

    /// Sets how long one attempt may run before it counts as a retryable failure
    /// (default: [`DEFAULT_STEP_TIMEOUT`]).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.spec.timeout = timeout;
        self
    }

    /// Runs at most `limit` attempts of this step at once in each runner process (0 counts
    /// as 1), whatever the runner's prefetch and `max_in_flight`: for a step that calls a
    /// service with a small connection pool, or uses much memory. The runner fetches no more
    /// of its inputs than it may start, so none waits unacknowledged for a free slot. It is a
    /// limit per runner: with N runners, up to N × `limit` run at once.
    #[must_use]
    pub fn concurrency(mut self, limit: u16) -> Self {
        self.spec.concurrency = std::num::NonZeroU16::new(limit.max(1));
        self
    }

    /// Runs at most `limit` attempts of this step at once across the whole fleet of runners
    /// (0 counts as 1), enforced by the broker: the step's queue gets a single active
    /// consumer, whose prefetch is `limit`, so one runner at a time takes the step's inputs
    /// (another takes over if it stops) and never holds more than `limit` of them. For a
    /// partner API that allows 3 calls at once, say. The step's work is not spread over the
    /// runners; the rest of the workflow still is.
    ///
    /// Adding it to a step whose queue exists changes the queue's arguments: stop the step's
    /// runners and delete its queue (`inqubo topology`) first, or the broker refuses the
    /// declaration (a topology mismatch).
    #[must_use]
    pub fn fleet_concurrency(mut self, limit: u16) -> Self {
        self.spec.fleet_concurrency = std::num::NonZeroU16::new(limit.max(1));
        self
    }

    /// Starts at most `per_second` attempts of this step per second across the whole fleet
    /// (0 counts as 1), evenly spaced: for an API with a rate limit. Like
    /// [`Step::fleet_concurrency`] (and combinable with it), the step's queue gets a single
    /// active consumer, here one that paces what it starts; it fetches about a fifth of a
    /// second's worth of inputs ahead, so none waits long unacknowledged.
    #[must_use]
    pub fn fleet_rate(mut self, per_second: u32) -> Self {
        self.spec.fleet_rate = std::num::NonZeroU32::new(per_second.max(1));
        self
    }

    /// The step's name, as given.
    pub fn name(&self) -> &str {
        &self.spec.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::{RunId, StepName, WorkflowName};

    fn ctx() -> StepContext {
        StepContext::new(
            RunId::new("r1").unwrap(),
            WorkflowName::new("wf").unwrap(),
            StepName::new("s").unwrap(),
            1,
        )
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn question_mark_makes_retryable_errors_with_their_sources() {
        fn fails() -> Result<(), StepError> {
            Err(Outer(std::io::Error::other("inner")))?;
            Ok(())
        }
        let error = fails().unwrap_err();
        assert!(!error.is_fatal());
        assert_eq!(error.message(), "outer: inner");
        assert!(StepError::fatal("no").is_fatal());
    }

    #[test]
    fn idempotency_key_ignores_the_attempt() {
        let mut second = ctx();
        second.attempt = 2;
        assert_eq!(ctx().idempotency_key(), second.idempotency_key());
        assert_eq!(ctx().idempotency_key(), "wf:s:r1");
    }

    #[tokio::test]
    async fn erased_step_decodes_runs_and_encodes() {
        async fn add_one(n: i64, _: StepContext) -> Result<i64, StepError> {
            Ok(n + 1)
        }
        let step = Step::new("add_one", add_one);
        let output = step
            .spec
            .handler
            .start(b"41", ctx())
            .unwrap()
            .await
            .unwrap();
        assert_eq!(output, b"42");
        let error = step.spec.handler.start(b"\"text\"", ctx()).err().unwrap();
        assert_eq!(error.expected, "i64");
    }

    #[tokio::test]
    async fn blocking_steps_run_off_the_async_threads() {
        let step = Step::blocking("sum", |v: Vec<u32>, _ctx| {
            Ok::<_, StepError>(v.iter().sum::<u32>())
        });
        let output = step
            .spec
            .handler
            .start(b"[1,2,3]", ctx())
            .unwrap()
            .await
            .unwrap();
        assert_eq!(output, b"6");
    }
}
