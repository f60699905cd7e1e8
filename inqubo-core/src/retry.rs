//! Retry policies: how long to wait before a failed step runs again, and when to give up.
//!
//! A policy only decides; it never sleeps. The runtime carries the delay on the broker (the AMQP
//! runtime parks the message in TTL delay queues), so a retry an hour away costs no memory.
//!
//! Attempts are numbered from 1. After attempt `n` fails with a retryable error the runtime asks
//! [`RetryStrategy::next_delay`]`(n, error)`: `Some(delay)` schedules attempt `n + 1` after
//! `delay`, `None` fails the step for good. Fatal errors ([`StepError::fatal`]) never reach the
//! policy.

use std::{fmt, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};

use crate::step::StepError;

/// Decides whether, and after how long, a failed attempt is retried.
///
/// Implement it for a strategy of your own; the built-in ones are [`LimitedRetries`],
/// [`NoRetries`] and [`ExponentialBackoff`].
///
/// ```
/// use std::time::Duration;
/// use inqubo_core::{RetryPolicy, RetrySpec, RetryStrategy, StepError};
///
/// /// Retries errors that mention "busy" every 10 seconds, five times; nothing else.
/// #[derive(Debug)]
/// struct RetryWhenBusy;
///
/// impl RetryStrategy for RetryWhenBusy {
///     fn next_delay(&self, attempt: u32, error: &StepError) -> Option<Duration> {
///         (attempt <= 5 && error.message().contains("busy")).then(|| Duration::from_secs(10))
///     }
///     fn spec(&self) -> RetrySpec {
///         RetrySpec::custom("retry every 10 s while busy, 5 times")
///     }
/// }
///
/// let policy = RetryPolicy::custom(RetryWhenBusy);
/// assert_eq!(policy.next_delay(1, &StepError::retryable("db busy")), Some(Duration::from_secs(10)));
/// assert_eq!(policy.next_delay(1, &StepError::retryable("bad data")), None);
/// ```
pub trait RetryStrategy: Send + Sync + fmt::Debug + 'static {
    /// The delay before attempt `attempt + 1`, after attempt `attempt` failed with `error`;
    /// `None` to give up.
    fn next_delay(&self, attempt: u32, error: &StepError) -> Option<Duration>;

    /// A serialisable description, shown by tools and in the workflow's JSON definition.
    fn spec(&self) -> RetrySpec;
}

/// A serialisable description of a retry policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RetrySpec {
    /// No retries.
    None,
    /// A fixed number of retries, a fixed delay apart.
    Limited {
        /// Retries after the first attempt.
        number_retries: u32,
        /// Delay before each retry, in milliseconds (`retry_timeout_ms` in older definitions).
        #[serde(alias = "retry_timeout_ms")]
        delay_ms: u64,
    },
    /// Exponential backoff with a cap and jitter.
    Exponential {
        /// Delay before the second attempt, in milliseconds.
        initial_delay_ms: u64,
        /// Growth factor between consecutive delays.
        multiplier: f64,
        /// Upper bound of any delay, in milliseconds.
        max_delay_ms: u64,
        /// Retries after the first attempt.
        max_retries: u32,
        /// Fraction of each delay that is randomised (0 = none, 1 = full jitter).
        jitter: f64,
    },
    /// A user-defined strategy.
    Custom {
        /// What the strategy does, in words.
        description: String,
    },
}

impl RetrySpec {
    /// A description of a custom strategy.
    pub fn custom(description: impl Into<String>) -> Self {
        RetrySpec::Custom {
            description: description.into(),
        }
    }
}

/// The retry policy of a step: a shared, cloneable [`RetryStrategy`].
///
/// The default is [`LimitedRetries::default`]: 3 retries, 1 second apart.
#[derive(Clone, Debug)]
pub struct RetryPolicy(Arc<dyn RetryStrategy>);

impl RetryPolicy {
    /// Never retry: the first failure is final.
    pub fn none() -> Self {
        Self::custom(NoRetries)
    }

    /// Retry up to `retries` times, waiting `delay` before each retry: at most `retries + 1`
    /// attempts in all.
    ///
    /// ```
    /// use std::time::Duration;
    /// use inqubo_core::{RetryPolicy, StepError};
    ///
    /// let policy = RetryPolicy::limited(3, Duration::from_secs(2));
    /// let error = StepError::retryable("flaky");
    /// assert_eq!(policy.next_delay(3, &error), Some(Duration::from_secs(2))); // attempt 4, 2 s on
    /// assert_eq!(policy.next_delay(4, &error), None); // attempt 4 was the last
    /// ```
    pub fn limited(retries: u32, delay: Duration) -> Self {
        Self::custom(LimitedRetries::new(retries, delay))
    }

    /// Exponential backoff; see [`ExponentialBackoff`] for its settings.
    pub fn exponential(backoff: ExponentialBackoff) -> Self {
        Self::custom(backoff)
    }

    /// A policy from any strategy.
    pub fn custom(strategy: impl RetryStrategy) -> Self {
        Self(Arc::new(strategy))
    }

    /// The delay before the next attempt, or `None` to give up.
    pub fn next_delay(&self, attempt: u32, error: &StepError) -> Option<Duration> {
        self.0.next_delay(attempt, error)
    }

    /// The policy's serialisable description.
    pub fn spec(&self) -> RetrySpec {
        self.0.spec()
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::custom(LimitedRetries::default())
    }
}

impl<S: RetryStrategy> From<S> for RetryPolicy {
    fn from(strategy: S) -> Self {
        Self::custom(strategy)
    }
}

/// Never retry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoRetries;

impl RetryStrategy for NoRetries {
    fn next_delay(&self, _attempt: u32, _error: &StepError) -> Option<Duration> {
        None
    }
    fn spec(&self) -> RetrySpec {
        RetrySpec::None
    }
}

/// Retry a fixed number of times with a fixed delay.
///
/// ```
/// use std::time::Duration;
/// use inqubo_core::{LimitedRetries, RetryStrategy, StepError};
///
/// let policy = LimitedRetries::new(2, Duration::from_millis(500));
/// let err = StepError::retryable("flaky");
/// assert_eq!(policy.next_delay(1, &err), Some(Duration::from_millis(500)));
/// assert_eq!(policy.next_delay(2, &err), Some(Duration::from_millis(500)));
/// assert_eq!(policy.next_delay(3, &err), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitedRetries {
    /// Retries after the first attempt (so at most `number_retries + 1` attempts).
    pub number_retries: u32,
    /// Delay before each retry, from the failure of the attempt before it.
    pub delay: Duration,
}

impl LimitedRetries {
    /// Up to `retries` retries, each `delay` after the failed attempt.
    pub fn new(retries: u32, delay: Duration) -> Self {
        Self {
            number_retries: retries,
            delay,
        }
    }
}

impl Default for LimitedRetries {
    /// 3 retries, 1 second apart.
    fn default() -> Self {
        Self::new(3, Duration::from_secs(1))
    }
}

impl RetryStrategy for LimitedRetries {
    fn next_delay(&self, attempt: u32, _error: &StepError) -> Option<Duration> {
        (attempt <= self.number_retries).then_some(self.delay)
    }
    fn spec(&self) -> RetrySpec {
        RetrySpec::Limited {
            number_retries: self.number_retries,
            delay_ms: millis(self.delay),
        }
    }
}

/// Exponential backoff with a cap and jitter.
///
/// The delay after attempt `n` is `initial_delay * multiplier^(n-1)`, capped at `max_delay`,
/// then reduced by a random share of up to `jitter` of itself, so that many runs failing
/// together do not retry in lockstep.
///
/// ```
/// use std::time::Duration;
/// use inqubo_core::{ExponentialBackoff, RetryPolicy};
///
/// let policy = RetryPolicy::exponential(
///     ExponentialBackoff::new(Duration::from_millis(200), Duration::from_secs(60))
///         .max_retries(8)
///         .jitter(0.3),
/// );
/// # let _ = policy;
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExponentialBackoff {
    initial_delay: Duration,
    multiplier: f64,
    max_delay: Duration,
    max_retries: u32,
    jitter: f64,
}

impl ExponentialBackoff {
    /// Doubling delays from `initial_delay` up to `max_delay`, 10 retries, jitter 0.5.
    pub fn new(initial_delay: Duration, max_delay: Duration) -> Self {
        Self {
            initial_delay,
            multiplier: 2.0,
            max_delay,
            max_retries: 10,
            jitter: 0.5,
        }
    }

    /// Growth factor between consecutive delays (at least 1).
    #[must_use]
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier.is_finite() {
            multiplier.max(1.0)
        } else {
            1.0
        };
        self
    }

    /// Retries after the first attempt.
    #[must_use]
    pub fn max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// Share of each delay that is randomised, clamped to `0.0..=1.0` (0 = none, 1 = full).
    #[must_use]
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// The delay after attempt `attempt` for a uniform random `sample` in `0.0..1.0`.
    ///
    /// Pure, so it can be tested with a seeded generator.
    pub fn delay_for(&self, attempt: u32, sample: f64) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let uncapped = self.initial_delay.as_secs_f64() * self.multiplier.powi(exponent);
        let capped = uncapped.min(self.max_delay.as_secs_f64());
        let jittered = capped * (1.0 - self.jitter * sample.clamp(0.0, 1.0));
        Duration::try_from_secs_f64(jittered).unwrap_or(self.max_delay)
    }
}

impl RetryStrategy for ExponentialBackoff {
    fn next_delay(&self, attempt: u32, _error: &StepError) -> Option<Duration> {
        (attempt <= self.max_retries).then(|| self.delay_for(attempt, rand::random::<f64>()))
    }
    fn spec(&self) -> RetrySpec {
        RetrySpec::Exponential {
            initial_delay_ms: millis(self.initial_delay),
            multiplier: self.multiplier,
            max_delay_ms: millis(self.max_delay),
            max_retries: self.max_retries,
            jitter: self.jitter,
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;

    fn err() -> StepError {
        StepError::retryable("boom")
    }

    #[test]
    fn default_policy_is_three_retries_one_second_apart() {
        let policy = RetryPolicy::default();
        for attempt in 1..=3 {
            assert_eq!(
                policy.next_delay(attempt, &err()),
                Some(Duration::from_secs(1))
            );
        }
        assert_eq!(policy.next_delay(4, &err()), None);
        assert_eq!(
            policy.spec(),
            RetrySpec::Limited {
                number_retries: 3,
                delay_ms: 1000
            }
        );
    }

    #[test]
    fn no_retries_gives_up_at_once() {
        assert_eq!(RetryPolicy::none().next_delay(1, &err()), None);
        assert_eq!(RetryPolicy::none().spec(), RetrySpec::None);
    }

    #[test]
    fn exponential_delays_double_until_the_cap_without_jitter() {
        let backoff =
            ExponentialBackoff::new(Duration::from_millis(100), Duration::from_secs(1)).jitter(0.0);
        let delays: Vec<_> = (1..=6).map(|a| backoff.delay_for(a, 0.9)).collect();
        let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn exponential_jitter_stays_within_its_share_with_a_seeded_rng() {
        let backoff =
            ExponentialBackoff::new(Duration::from_secs(1), Duration::from_secs(8)).jitter(0.5);
        let mut rng = StdRng::seed_from_u64(7);
        let mut seen = Vec::new();
        for _ in 0..1000 {
            let delay = backoff.delay_for(3, rng.random::<f64>());
            assert!(delay >= Duration::from_secs(2), "{delay:?}");
            assert!(delay <= Duration::from_secs(4), "{delay:?}");
            seen.push(delay);
        }
        seen.sort();
        seen.dedup();
        assert!(seen.len() > 100, "jitter should spread delays");
    }

    #[test]
    fn exponential_gives_up_after_max_retries_and_survives_huge_attempts() {
        let backoff = ExponentialBackoff::new(Duration::from_millis(10), Duration::from_secs(5))
            .max_retries(2);
        assert!(backoff.next_delay(2, &err()).is_some());
        assert_eq!(backoff.next_delay(3, &err()), None);
        assert!(backoff.delay_for(u32::MAX, 0.0) <= Duration::from_secs(5));
    }

    #[test]
    fn specs_serialise_with_a_kind_tag() {
        let json = serde_json::to_value(LimitedRetries::default().spec()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kind": "limited", "number_retries": 3, "delay_ms": 1000})
        );
    }

    #[test]
    fn limited_specs_of_older_definitions_still_deserialise() {
        let old =
            serde_json::json!({"kind": "limited", "number_retries": 2, "retry_timeout_ms": 500});
        assert_eq!(
            serde_json::from_value::<RetrySpec>(old).unwrap(),
            RetrySpec::Limited {
                number_retries: 2,
                delay_ms: 500
            }
        );
    }
}
