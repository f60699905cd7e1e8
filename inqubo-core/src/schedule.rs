//! Cron schedules: a workflow that starts runs by itself, at the times a cron pattern names.
//!
//! A schedule is pure data and arithmetic: which ticks are due, and the run id of each. The
//! run id is the schedule's name and the tick's time (`nightly@2026-11-30T02:00:00Z`), the
//! same wherever it is computed, so two runners that both fire a tick (a leader change at the
//! wrong moment) start one run: the workflow's run join admits a run id once.

use std::{str::FromStr, time::SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};
use croner::Cron;
use thiserror::Error;

use crate::name::RunId;

/// The longest schedule name.
pub const MAX_SCHEDULE_NAME_LEN: usize = 64;

/// How long after a tick a runner that takes over the schedule still fires it (default: an
/// hour). A tick older than this that no runner fired is skipped.
pub const DEFAULT_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(3600);

/// Why a schedule cannot be made.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// The name is empty, too long, or holds `@`, whitespace or control characters.
    #[error(
        "schedule name `{0}` must be 1 to {MAX_SCHEDULE_NAME_LEN} characters without `@`, \
         whitespace or control characters"
    )]
    InvalidName(String),
    /// The cron pattern does not parse.
    #[error("cron pattern `{pattern}` does not parse: {reason}")]
    InvalidPattern {
        /// The pattern.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The time zone is not an IANA name (e.g. `Europe/Berlin`).
    #[error("unknown time zone `{0}` (expected an IANA name such as `Europe/Berlin`)")]
    UnknownTimeZone(String),
    /// The input does not encode as JSON.
    #[error("schedule input does not encode as JSON")]
    Input(#[source] serde_json::Error),
}

/// A schedule as data: announced by runners for the schedules in their code, stored by
/// `inqubo schedule add` (one message per schedule in `<prefix>.<workflow>.schedules`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScheduleDefinition {
    /// The schedule's name, the first part of its runs' ids.
    pub name: String,
    /// The cron pattern.
    pub pattern: String,
    /// The IANA time zone the pattern is read in.
    pub time_zone: String,
    /// The input of its runs.
    pub input: serde_json::Value,
    /// How late a new leader still fires a tick nobody fired, in seconds.
    pub catch_up_s: u64,
}

/// A cron schedule of a workflow: its runs start at the times `pattern` names, in a time zone
/// (UTC unless told otherwise), each with the same input.
///
/// ```
/// use inqubo_core::schedule::Schedule;
///
/// let nightly = Schedule::cron("nightly", "0 2 * * *")?   // 02:00 every day
///     .in_time_zone("Europe/Berlin")?
///     .with_input(&serde_json::json!({"full": true}))?;
/// let tick = "2026-11-30T01:00:00Z".parse::<chrono::DateTime<chrono::Utc>>().unwrap().into();
/// assert_eq!(nightly.run_id(tick).as_str(), "nightly@2026-11-30T01:00:00Z");
/// # Ok::<(), inqubo_core::schedule::ScheduleError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Schedule {
    name: String,
    pattern: String,
    cron: Cron,
    time_zone: chrono_tz::Tz,
    input: Vec<u8>,
    catch_up: std::time::Duration,
}

impl Schedule {
    /// A schedule named `name` (unique among the workflow's schedules; part of every run id
    /// it makes) firing at the times of `pattern`: five fields (minute, hour, day of month,
    /// month, day of week), or six with seconds first; `@hourly` and the like work too. UTC,
    /// input `null`.
    pub fn cron(
        name: impl Into<String>,
        pattern: impl Into<String>,
    ) -> Result<Self, ScheduleError> {
        let name = name.into();
        let pattern = pattern.into();
        let bad_name = name.is_empty()
            || name.chars().count() > MAX_SCHEDULE_NAME_LEN
            || name
                .chars()
                .any(|c| c == '@' || c.is_whitespace() || c.is_control());
        if bad_name {
            return Err(ScheduleError::InvalidName(name));
        }
        let cron = Cron::from_str(&pattern).map_err(|e| ScheduleError::InvalidPattern {
            pattern: pattern.clone(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            name,
            pattern,
            cron,
            time_zone: chrono_tz::UTC,
            input: b"null".to_vec(),
            catch_up: DEFAULT_CATCH_UP,
        })
    }

    /// Reads the pattern in the IANA time zone `zone` (e.g. `America/New_York`), daylight
    /// saving time included.
    pub fn in_time_zone(mut self, zone: &str) -> Result<Self, ScheduleError> {
        self.time_zone = zone
            .parse()
            .map_err(|_| ScheduleError::UnknownTimeZone(zone.to_owned()))?;
        Ok(self)
    }

    /// The input every run of this schedule starts with (the workflow's first step's input).
    pub fn with_input(mut self, input: &impl serde::Serialize) -> Result<Self, ScheduleError> {
        self.input = serde_json::to_vec(input).map_err(ScheduleError::Input)?;
        Ok(self)
    }

    /// How late a runner taking over may still fire a tick nobody fired (default
    /// [`DEFAULT_CATCH_UP`]); older ones are skipped.
    #[must_use]
    pub fn catch_up(mut self, window: std::time::Duration) -> Self {
        self.catch_up = window;
        self
    }

    /// The schedule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cron pattern.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The time zone the pattern is read in.
    pub fn time_zone(&self) -> &str {
        self.time_zone.name()
    }

    /// The input of its runs, as JSON.
    pub fn input(&self) -> &[u8] {
        &self.input
    }

    /// The catch-up window.
    pub fn catch_up_window(&self) -> std::time::Duration {
        self.catch_up
    }

    /// The latest tick at or before `now`, if the pattern has one.
    pub fn latest_tick(&self, now: SystemTime) -> Option<SystemTime> {
        let now = DateTime::<Utc>::from(now).with_timezone(&self.time_zone);
        self.cron
            .find_previous_occurrence(&now, true)
            .ok()
            .map(|tick| tick.with_timezone(&Utc).into())
    }

    /// The schedule as data: what runners announce, and what `inqubo schedule add` stores.
    pub fn definition(&self) -> ScheduleDefinition {
        ScheduleDefinition {
            name: self.name.clone(),
            pattern: self.pattern.clone(),
            time_zone: self.time_zone.name().to_owned(),
            input: serde_json::from_slice(&self.input).unwrap_or(serde_json::Value::Null),
            catch_up_s: self.catch_up.as_secs(),
        }
    }

    /// The schedule `definition` describes, checked as [`Schedule::cron`] checks a new one.
    pub fn from_definition(definition: &ScheduleDefinition) -> Result<Self, ScheduleError> {
        Ok(Self::cron(&definition.name, &definition.pattern)?
            .in_time_zone(&definition.time_zone)?
            .with_input(&definition.input)?
            .catch_up(std::time::Duration::from_secs(definition.catch_up_s)))
    }

    /// The first tick after `after`, if the pattern has one.
    pub fn next_tick(&self, after: SystemTime) -> Option<SystemTime> {
        let after = DateTime::<Utc>::from(after).with_timezone(&self.time_zone);
        self.cron
            .find_next_occurrence(&after, false)
            .ok()
            .map(|tick| tick.with_timezone(&Utc).into())
    }

    /// The run id of the run the tick at `tick` starts: `<name>@<tick, RFC 3339 UTC>`.
    pub fn run_id(&self, tick: SystemTime) -> RunId {
        let at = DateTime::<Utc>::from(tick).to_rfc3339_opts(SecondsFormat::Secs, true);
        // A valid name and a timestamp make a valid run id.
        RunId::new(format!("{}@{at}", self.name)).unwrap_or_else(|_| RunId::random())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(text: &str) -> SystemTime {
        text.parse::<DateTime<Utc>>().unwrap().into()
    }

    #[test]
    fn ticks_and_run_ids_follow_the_pattern_in_its_time_zone() {
        let hourly = Schedule::cron("hourly", "0 * * * *").unwrap();
        assert_eq!(
            hourly.latest_tick(at("2026-11-29T17:20:05Z")),
            Some(at("2026-11-29T17:00:00Z"))
        );
        assert_eq!(
            hourly.latest_tick(at("2026-11-29T17:00:00Z")),
            Some(at("2026-11-29T17:00:00Z"))
        );
        assert_eq!(
            hourly.next_tick(at("2026-11-29T17:00:00Z")),
            Some(at("2026-11-29T18:00:00Z"))
        );
        assert_eq!(
            hourly.run_id(at("2026-11-29T17:00:00Z")).as_str(),
            "hourly@2026-11-29T17:00:00Z"
        );
        // 09:00 in New York is 14:00 UTC in winter.
        let morning = Schedule::cron("morning", "0 9 * * *")
            .unwrap()
            .in_time_zone("America/New_York")
            .unwrap();
        assert_eq!(
            morning.next_tick(at("2026-11-29T12:00:00Z")),
            Some(at("2026-11-29T14:00:00Z"))
        );
        let every_second = Schedule::cron("s", "* * * * * *").unwrap();
        assert_eq!(
            every_second.next_tick(at("2026-11-29T12:00:00Z")),
            Some(at("2026-11-29T12:00:00Z") + Duration::from_secs(1))
        );
    }

    #[test]
    fn bad_names_patterns_and_zones_are_refused() {
        assert!(matches!(
            Schedule::cron("a@b", "* * * * *"),
            Err(ScheduleError::InvalidName(_))
        ));
        assert!(matches!(
            Schedule::cron("", "* * * * *"),
            Err(ScheduleError::InvalidName(_))
        ));
        assert!(matches!(
            Schedule::cron("x", "61 * * * *"),
            Err(ScheduleError::InvalidPattern { .. })
        ));
        assert!(matches!(
            Schedule::cron("x", "* * * * *")
                .unwrap()
                .in_time_zone("Mars/Olympus"),
            Err(ScheduleError::UnknownTimeZone(_))
        ));
    }
}
