//! The error a step returns: retryable unless made fatal.

use std::{error::Error as StdError, fmt};

/// The error a step returns.
///
/// `?` on any error makes a *retryable* error, which goes through the step's retry policy.
/// [`StepError::fatal`] makes an error that fails the step at once, without retries.
///
/// ```
/// use inqubo_core::StepError;
///
/// fn parse(input: &str) -> Result<u32, StepError> {
///     let n: u32 = input.parse()?; // retryable
///     if n == 0 {
///         return Err(StepError::fatal("zero is never valid")); // no retry
///     }
///     Ok(n)
/// }
/// assert!(!parse("x").unwrap_err().is_fatal());
/// assert!(parse("0").unwrap_err().is_fatal());
/// ```
pub struct StepError {
    fatal: bool,
    error: Box<dyn StdError + Send + Sync>,
}

impl StepError {
    /// A failure worth retrying.
    pub fn retryable(error: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self {
            fatal: false,
            error: error.into(),
        }
    }

    /// A failure that no retry can fix: the step fails at once and its input is parked.
    pub fn fatal(error: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self {
            fatal: true,
            error: error.into(),
        }
    }

    /// Whether the error skips the retry policy.
    pub fn is_fatal(&self) -> bool {
        self.fatal
    }

    /// The error and its chain of sources, joined by `: `.
    pub fn message(&self) -> String {
        let mut message = self.error.to_string();
        let mut source = self.error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        message
    }

    /// The underlying error.
    pub fn inner(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.error
    }
}

impl<E> From<E> for StepError
where
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    fn from(error: E) -> Self {
        Self::retryable(error)
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl fmt::Debug for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepError")
            .field("fatal", &self.fatal)
            .field("message", &self.message())
            .finish()
    }
}
