//! The ranges of a circuit breaker's settings, written once.
//!
//! Compiled by both crates, like `names.rs`: here, so `breaker(...)` is checked at compile
//! time, and in `retry-kafka` (through the symlink `retry-kafka/src/breaker_rules.rs`), where
//! `Breaker::check` holds a breaker set in code to the same ranges. Keep it free of
//! dependencies and of anything but `core`.

/// A setting out of range: which, and why (a phrase that follows its name).
pub(crate) type OutOfRange = (&'static str, &'static str);

pub(crate) fn failure_rate(percent: u64) -> Result<(), OutOfRange> {
    within(
        "failure_rate",
        percent,
        1,
        100,
        "is a percentage of failed attempts: from 1 to 100",
    )
}

pub(crate) fn window_attempts(attempts: u64) -> Result<(), OutOfRange> {
    within(
        "window",
        attempts,
        1,
        100_000,
        "of attempts holds from 1 to 100000",
    )
}

pub(crate) fn window_ms(ms: u64) -> Result<(), OutOfRange> {
    within(
        "window",
        ms,
        1_000,
        86_400_000,
        "of time is from \"1s\" to \"1d\"",
    )
}

pub(crate) fn min_attempts(attempts: u64) -> Result<(), OutOfRange> {
    within("min_attempts", attempts, 1, u64::MAX, "must be at least 1")
}

pub(crate) fn cool_down_ms(ms: u64) -> Result<(), OutOfRange> {
    within("cool_down", ms, 1, u64::MAX, "must be longer than zero")
}

pub(crate) fn max_cool_down_ms(max: u64, cool_down: u64) -> Result<(), OutOfRange> {
    within(
        "max_cool_down",
        max,
        cool_down.max(1),
        u64::MAX,
        "must not be shorter than `cool_down` (the cool-down only grows)",
    )
}

pub(crate) fn probes(probes: u64) -> Result<(), OutOfRange> {
    within(
        "probes",
        probes,
        1,
        1_000,
        "(attempts at a time while half-open) is from 1 to 1000",
    )
}

fn within(
    setting: &'static str,
    value: u64,
    low: u64,
    high: u64,
    why: &'static str,
) -> Result<(), OutOfRange> {
    if low <= value && value <= high {
        Ok(())
    } else {
        Err((setting, why))
    }
}
