//! Topic and group name checks shared by both macros.

/// Kafka's rule for topic and group names, also safe as Redis keys: 1..=249 characters of
/// `[a-zA-Z0-9._-]`. Checked at compile time so a typo never reaches a broker.
pub(crate) fn check(kind: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{kind} name must not be empty"));
    }
    if name.len() > 249 {
        return Err(format!(
            "{kind} name is {} characters long; at most 249 are allowed",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("`{name}` is not a valid {kind} name"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{kind} name contains {bad:?}; only ASCII letters, digits, `.`, `_` and `-` are allowed"
        ));
    }
    Ok(())
}
