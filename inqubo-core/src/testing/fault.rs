//! Fault injection: wrap a step function so that its first attempts fail, panic or hang.

use std::{future::Future, sync::Arc};

use crate::{StepContext, StepError, StepFn};

/// Wraps a step function so that its first `n` attempts fail with a retryable error.
pub fn fail_first<I, O, F>(n: u32, step: F) -> impl StepFn<I, O>
where
    F: StepFn<I, O>,
    I: Send + 'static,
    O: Send + 'static,
{
    inject(n, step, |attempt| async move {
        Err(StepError::retryable(format!(
            "injected failure of attempt {attempt}"
        )))
    })
}

/// Wraps a step function so that its first `n` attempts panic.
pub fn panic_first<I, O, F>(n: u32, step: F) -> impl StepFn<I, O>
where
    F: StepFn<I, O>,
    I: Send + 'static,
    O: Send + 'static,
{
    inject(n, step, |attempt| async move {
        #[allow(clippy::panic)]
        {
            panic!("injected panic in attempt {attempt}")
        }
    })
}

/// Wraps a step function so that its first `n` attempts never finish (so they run into the
/// step's timeout).
pub fn hang_first<I, O, F>(n: u32, step: F) -> impl StepFn<I, O>
where
    F: StepFn<I, O>,
    I: Send + 'static,
    O: Send + 'static,
{
    inject(n, step, |_attempt| std::future::pending())
}

/// Wraps a step function so that its first `n` attempts fail with a fatal error.
pub fn fatal_first<I, O, F>(n: u32, step: F) -> impl StepFn<I, O>
where
    F: StepFn<I, O>,
    I: Send + 'static,
    O: Send + 'static,
{
    inject(n, step, |attempt| async move {
        Err(StepError::fatal(format!(
            "injected fatal failure of attempt {attempt}"
        )))
    })
}

fn inject<I, O, F, Fault, FaultFut>(n: u32, step: F, fault: Fault) -> impl StepFn<I, O>
where
    F: StepFn<I, O>,
    Fault: Fn(u32) -> FaultFut + Send + Sync + 'static,
    FaultFut: Future<Output = Result<O, StepError>> + Send + 'static,
    I: Send + 'static,
    O: Send + 'static,
{
    let step = Arc::new(step);
    let fault = Arc::new(fault);
    move |input: I, ctx: StepContext| {
        let step = Arc::clone(&step);
        let fault = Arc::clone(&fault);
        // Decided by the attempt number, so that a redelivered attempt behaves alike.
        let attempt = ctx.attempt;
        async move {
            if attempt <= n {
                fault(attempt).await
            } else {
                step.call(input, ctx).await
            }
        }
    }
}
