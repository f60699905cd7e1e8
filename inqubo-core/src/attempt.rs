//! Running one attempt of a step and deciding what happens next.
//!
//! This is the broker-independent heart of every runtime: decode the input, run the step under
//! its timeout, catch panics, and turn the result into an [`AttemptOutcome`] by asking the
//! step's retry policy. A runtime then only has to publish what the outcome says.

use std::{any::Any, panic::AssertUnwindSafe, time::Duration};

use futures_util::FutureExt;

use crate::{
    event::{FailedBody, FailureReason, RetryingBody},
    step::{StepContext, StepError},
    workflow::StepNode,
};

/// What a runtime must do after one attempt of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttemptOutcome {
    /// Publish `succeeded` with `output` (JSON bytes) as its body.
    Succeeded {
        /// The step's output, encoded as JSON.
        output: Vec<u8>,
    },
    /// Publish `retrying` and run the step again after `delay`.
    Retry {
        /// What went wrong.
        error: String,
        /// How long to wait before the next attempt.
        delay: Duration,
    },
    /// Publish `failed` and park the input.
    Failed {
        /// What went wrong.
        error: String,
        /// Why the failure is final.
        reason: FailureReason,
    },
}

impl AttemptOutcome {
    /// The body of the `retrying` event for this outcome, if it is a retry of `attempt`.
    pub fn retrying_body(&self, attempt: u32) -> Option<RetryingBody> {
        match self {
            AttemptOutcome::Retry { error, delay } => Some(RetryingBody {
                error: error.clone(),
                attempt,
                next_attempt: attempt.saturating_add(1),
                delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            }),
            _ => None,
        }
    }

    /// The body of the `failed` event for this outcome, if it is a final failure of `attempt`.
    pub fn failed_body(&self, attempt: u32) -> Option<FailedBody> {
        match self {
            AttemptOutcome::Failed { error, reason } => Some(FailedBody {
                error: error.clone(),
                attempt,
                reason: *reason,
            }),
            _ => None,
        }
    }
}

/// Runs one attempt of `step` on `input` (JSON bytes) and decides what follows.
///
/// Never panics: a panic inside the step, or a step running past its timeout, is a retryable
/// failure; input that does not decode is an [`FailureReason::Undecodable`] failure.
pub async fn run_attempt(step: &StepNode, ctx: StepContext, input: &[u8]) -> AttemptOutcome {
    let attempt = ctx.attempt;
    let future = match step.handler().start(input, ctx) {
        Ok(future) => future,
        Err(decode) => {
            return AttemptOutcome::Failed {
                error: decode.to_string(),
                reason: FailureReason::Undecodable,
            };
        }
    };
    let guarded = AssertUnwindSafe(future).catch_unwind();
    let result = match tokio::time::timeout(step.timeout(), guarded).await {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => Err(StepError::retryable(format!(
            "step panicked: {}",
            panic_message(&*panic)
        ))),
        Err(_elapsed) => Err(StepError::retryable(format!(
            "step timed out after {:?}",
            step.timeout()
        ))),
    };
    match result {
        Ok(output) => AttemptOutcome::Succeeded { output },
        Err(error) if error.is_fatal() => AttemptOutcome::Failed {
            error: error.message(),
            reason: FailureReason::Fatal,
        },
        Err(error) => match step.retry().next_delay(attempt, &error) {
            Some(delay) => AttemptOutcome::Retry {
                error: error.message(),
                delay,
            },
            None => AttemptOutcome::Failed {
                error: error.message(),
                reason: FailureReason::RetriesExhausted,
            },
        },
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(text) = panic.downcast_ref::<&str>() {
        text
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text
    } else {
        "non-string panic payload"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RetryPolicy, RunId, Step, StepName, Workflow, WorkflowName};

    fn ctx(attempt: u32) -> StepContext {
        StepContext::new(
            RunId::new("r").unwrap(),
            WorkflowName::new("wf").unwrap(),
            StepName::new("s").unwrap(),
            attempt,
        )
    }

    fn single<I, O: serde::Serialize>(step: Step<I, O>) -> Workflow {
        Workflow::builder("wf").start(step).build().unwrap()
    }

    async fn flaky(fail_before: u32, ctx: StepContext) -> Result<u32, StepError> {
        if ctx.attempt < fail_before {
            return Err(StepError::retryable("not yet"));
        }
        Ok(ctx.attempt)
    }

    #[tokio::test]
    async fn success_carries_the_encoded_output() {
        let flow = single(Step::new("s", flaky));
        let outcome = run_attempt(&flow.steps()[0], ctx(3), b"2").await;
        assert_eq!(
            outcome,
            AttemptOutcome::Succeeded {
                output: b"3".to_vec()
            }
        );
    }

    #[tokio::test]
    async fn retryable_errors_follow_the_policy_until_exhausted() {
        let flow = single(
            Step::new("s", flaky).retry(RetryPolicy::limited(1, Duration::from_millis(250))),
        );
        let first = run_attempt(&flow.steps()[0], ctx(1), b"9").await;
        assert_eq!(
            first,
            AttemptOutcome::Retry {
                error: "not yet".into(),
                delay: Duration::from_millis(250)
            }
        );
        assert_eq!(first.retrying_body(1).unwrap().next_attempt, 2);
        let second = run_attempt(&flow.steps()[0], ctx(2), b"9").await;
        assert_eq!(
            second,
            AttemptOutcome::Failed {
                error: "not yet".into(),
                reason: FailureReason::RetriesExhausted
            }
        );
    }

    #[tokio::test]
    async fn fatal_errors_skip_the_policy() {
        async fn fatal(_: (), _: StepContext) -> Result<(), StepError> {
            Err(StepError::fatal("bad request"))
        }
        let flow = single(Step::new("s", fatal));
        let outcome = run_attempt(&flow.steps()[0], ctx(1), b"null").await;
        assert_eq!(
            outcome,
            AttemptOutcome::Failed {
                error: "bad request".into(),
                reason: FailureReason::Fatal
            }
        );
    }

    #[tokio::test]
    async fn undecodable_input_fails_at_once() {
        let flow = single(Step::new("s", flaky));
        let outcome = run_attempt(&flow.steps()[0], ctx(1), b"{not json").await;
        assert!(matches!(
            outcome,
            AttemptOutcome::Failed {
                reason: FailureReason::Undecodable,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn panics_are_retryable_failures() {
        async fn panics(_: (), _: StepContext) -> Result<(), StepError> {
            panic!("kaboom")
        }
        let flow = single(Step::new("s", panics));
        let outcome = run_attempt(&flow.steps()[0], ctx(1), b"null").await;
        assert!(
            matches!(&outcome, AttemptOutcome::Retry { error, .. } if error == "step panicked: kaboom"),
            "{outcome:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn steps_past_their_timeout_are_retryable_failures() {
        async fn slow(_: (), _: StepContext) -> Result<(), StepError> {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        }
        let flow = single(Step::new("s", slow).timeout(Duration::from_secs(5)));
        let outcome = run_attempt(&flow.steps()[0], ctx(1), b"null").await;
        assert!(
            matches!(&outcome, AttemptOutcome::Retry { error, .. } if error.contains("timed out")),
            "{outcome:?}"
        );
    }
}
