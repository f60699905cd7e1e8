//! Validated identifiers: workflow names, step names and run ids.
//!
//! Workflow and step names become words of AMQP routing keys and queue names, so they are
//! restricted to a small alphabet that never collides with the separators and wildcards of a
//! topic exchange (`.`, `*`, `#`). Run ids are chosen by whoever triggers a run; they travel in
//! a header and only need to be non-empty, printable text.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest workflow or step name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// The longest run id accepted.
pub const MAX_RUN_ID_LEN: usize = 255;

/// Step names that Inqubo keeps for its own queues.
pub const RESERVED_STEP_NAMES: &[&str] = &["parked"];

/// Why a name or run id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    #[error("name is empty")]
    Empty,
    /// The name is longer than allowed.
    #[error("name `{name}` is longer than {max} characters")]
    TooLong {
        /// The refused name.
        name: String,
        /// The longest length accepted.
        max: usize,
    },
    /// The name has a character outside `[A-Za-z0-9_-]` or does not start with a letter.
    #[error(
        "name `{0}` must start with a letter and contain only ASCII letters, digits, `_` and `-`"
    )]
    InvalidCharacter(String),
    /// The name is reserved by Inqubo.
    #[error("name `{0}` is reserved")]
    Reserved(String),
    /// A run id holds a control character.
    #[error("run id `{0}` holds a control character")]
    ControlCharacter(String),
}

fn validate_identifier(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            name: name.to_owned(),
            max: MAX_NAME_LEN,
        });
    }
    let mut chars = name.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !starts_with_letter || !rest_ok {
        return Err(NameError::InvalidCharacter(name.to_owned()));
    }
    Ok(())
}

macro_rules! string_newtype {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(value: String) -> Result<Self, NameError> {
                Self::new(value)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = NameError;
            fn try_from(value: &str) -> Result<Self, NameError> {
                Self::new(value)
            }
        }

        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(value: &str) -> Result<Self, NameError> {
                Self::new(value)
            }
        }
    };
}

string_newtype!(
    /// The name of a workflow: the first word of its routing keys.
    ///
    /// ```
    /// use inqubo_core::WorkflowName;
    /// assert!(WorkflowName::new("simple").is_ok());
    /// assert!(WorkflowName::new("not.valid").is_err());
    /// ```
    WorkflowName
);

string_newtype!(
    /// The name of a step, unique within its workflow.
    StepName
);

string_newtype!(
    /// The id of one run of a workflow, carried in the `run-id` header.
    ///
    /// Any non-empty text without control characters, up to 255 bytes.
    RunId
);

impl WorkflowName {
    /// Validates and wraps a workflow name.
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        validate_identifier(&name)?;
        Ok(Self(name))
    }
}

impl StepName {
    /// Validates and wraps a step name.
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        validate_identifier(&name)?;
        if RESERVED_STEP_NAMES.contains(&name.as_str()) {
            return Err(NameError::Reserved(name));
        }
        Ok(Self(name))
    }
}

impl RunId {
    /// Validates and wraps a run id.
    pub fn new(id: impl Into<String>) -> Result<Self, NameError> {
        let id = id.into();
        if id.is_empty() {
            return Err(NameError::Empty);
        }
        if id.len() > MAX_RUN_ID_LEN {
            return Err(NameError::TooLong {
                name: id,
                max: MAX_RUN_ID_LEN,
            });
        }
        if id.chars().any(char::is_control) {
            return Err(NameError::ControlCharacter(id));
        }
        Ok(Self(id))
    }

    /// A fresh random run id (a UUID-like 128-bit hex string).
    pub fn random() -> Self {
        Self(format!("{:032x}", rand::random::<u128>()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_accept_letters_digits_underscore_and_hyphen() {
        for ok in ["simple", "get_data", "Step-2", "a"] {
            assert!(StepName::new(ok).is_ok(), "{ok}");
            assert!(WorkflowName::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn identifiers_refuse_routing_key_separators_and_wildcards() {
        for bad in ["a.b", "a*", "a#", "has space", "2fast", "_x", "é"] {
            assert!(
                matches!(StepName::new(bad), Err(NameError::InvalidCharacter(_))),
                "{bad}"
            );
        }
        assert_eq!(StepName::new(""), Err(NameError::Empty));
        assert!(matches!(
            StepName::new("a".repeat(65)),
            Err(NameError::TooLong { .. })
        ));
    }

    #[test]
    fn parked_is_reserved_for_steps_only() {
        assert_eq!(
            StepName::new("parked"),
            Err(NameError::Reserved("parked".into()))
        );
        assert!(WorkflowName::new("parked").is_ok());
    }

    #[test]
    fn run_ids_are_free_text_without_control_characters() {
        assert!(RunId::new("run-42 / tenant:7").is_ok());
        assert_eq!(RunId::new(""), Err(NameError::Empty));
        assert!(matches!(
            RunId::new("a\nb"),
            Err(NameError::ControlCharacter(_))
        ));
        assert_ne!(RunId::random(), RunId::random());
    }

    #[test]
    fn names_deserialize_through_validation() {
        let name: StepName = serde_json::from_str("\"ok\"").unwrap();
        assert_eq!(name.as_str(), "ok");
        assert!(serde_json::from_str::<StepName>("\"no.dots\"").is_err());
    }
}
