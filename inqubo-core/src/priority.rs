//! Priority classes: a run triggered `high` has its steps taken before the backlog of
//! `normal` runs, and `low` after it, on quorum queues too (which have no priorities in
//! RabbitMQ 3.10).
//!
//! A workflow built with [`WorkflowBuilder::priorities`](crate::WorkflowBuilder::priorities)
//! has, for each step, a *lane* queue per class besides its own queue (the `normal` lane):
//! `<prefix>.<workflow>.<step>.high` and `.low`. Every message of a prioritized run carries
//! the `run-priority` header, and its step inputs travel in its lane (through the retry
//! exchange, under `<workflow>.<step>.<class>`). A runner takes a higher lane's input first
//! whenever one waits, but lets a lower lane's input through after [`FAIR_SHARE`] starts of
//! higher ones while it waited, so that no class starves.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How many starts of higher classes a waiting input of a lower class lets pass before it
/// starts anyway.
pub const FAIR_SHARE: usize = 8;

/// The priority class of a run.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Taken before every other class.
    High,
    /// The default: the step's own queue.
    #[default]
    Normal,
    /// Taken after the other classes (but never starved).
    Low,
}

impl Priority {
    /// Every class, highest first.
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    /// The class as the `run-priority` header spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    /// The suffix of the class's lane queue and routing key; `None` for `normal`, whose lane
    /// is the step's own queue.
    pub fn lane(self) -> Option<&'static str> {
        match self {
            Priority::Normal => None,
            other => Some(other.as_str()),
        }
    }

    /// 0 for the highest class.
    pub fn rank(self) -> usize {
        match self {
            Priority::High => 0,
            Priority::Normal => 1,
            Priority::Low => 2,
        }
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A priority class that is not `high`, `normal` or `low`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown priority `{0}` (expected high, normal or low)")]
pub struct UnknownPriority(pub String);

impl FromStr for Priority {
    type Err = UnknownPriority;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "high" => Ok(Priority::High),
            "normal" => Ok(Priority::Normal),
            "low" => Ok(Priority::Low),
            other => Err(UnknownPriority(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_read_and_write_as_the_header_spells_them() {
        for class in Priority::ALL {
            assert_eq!(class.as_str().parse::<Priority>(), Ok(class));
        }
        assert!("urgent".parse::<Priority>().is_err());
        assert_eq!(Priority::Normal.lane(), None);
        assert_eq!(Priority::High.lane(), Some("high"));
        assert!(Priority::High.rank() < Priority::Low.rank());
    }
}
