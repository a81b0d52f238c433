//! The rule for topic and group names, written once.
//!
//! This file is compiled by both crates: here, so the macros reject a bad name at compile time,
//! and in `retry-kafka` (through the symlink `retry-kafka/src/names.rs`), which checks the
//! names its topic patterns derive. A proc-macro crate cannot export functions, so the source
//! is shared instead, as serde_derive_internals shares serde_derive's. Keep it free of
//! dependencies and of anything but `core`.

use core::fmt;

/// Why a name breaks Kafka's rule for topic and group names (also safe as Redis keys):
/// 1..=249 characters of `[a-zA-Z0-9._-]`, and neither `.` nor `..`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameError {
    Empty {
        kind: &'static str,
    },
    TooLong {
        kind: &'static str,
        len: usize,
    },
    /// `.` or `..`, which Kafka reserves.
    Dots {
        kind: &'static str,
        name: &'static str,
    },
    BadChar {
        kind: &'static str,
        found: char,
    },
}

/// Checks a `kind` name (`"topic"` or `"group"`) against the rule.
pub(crate) fn check(kind: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if name.len() > 249 {
        return Err(NameError::TooLong {
            kind,
            len: name.len(),
        });
    }
    match name {
        "." => return Err(NameError::Dots { kind, name: "." }),
        ".." => return Err(NameError::Dots { kind, name: ".." }),
        _ => {}
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(found) => Err(NameError::BadChar { kind, found }),
        None => Ok(()),
    }
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            NameError::Empty { kind } => write!(f, "{kind} name must not be empty"),
            NameError::TooLong { kind, len } => {
                write!(f, "{kind} name is {len} characters long; at most 249 are allowed")
            }
            NameError::Dots { kind, name } => write!(f, "`{name}` is not a valid {kind} name"),
            NameError::BadChar { kind, found } => write!(
                f,
                "{kind} name contains {found:?}; only ASCII letters, digits, `.`, `_` and `-` are allowed"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{check, NameError};

    #[test]
    fn accepts_kafka_names() {
        for good in ["orders", "orders.eu-1_v2", "a", "...", &"x".repeat(249)] {
            assert_eq!(check("topic", good), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn rejects_what_kafka_rejects() {
        assert_eq!(check("topic", ""), Err(NameError::Empty { kind: "topic" }));
        assert_eq!(
            check("topic", &"x".repeat(250)),
            Err(NameError::TooLong {
                kind: "topic",
                len: 250
            })
        );
        assert_eq!(
            check("group", ".."),
            Err(NameError::Dots {
                kind: "group",
                name: ".."
            })
        );
        assert_eq!(
            check("group", "billing team").unwrap_err().to_string(),
            "group name contains ' '; only ASCII letters, digits, `.`, `_` and `-` are allowed"
        );
        assert_eq!(
            check("topic", ".").unwrap_err().to_string(),
            "`.` is not a valid topic name"
        );
    }
}
