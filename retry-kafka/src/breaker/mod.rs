//! Circuit breakers: `breaker` on a handler stops its attempts while the service it calls is
//! down, instead of walking every record through every retry level into the dead letters.
//!
//! [`Breaker`] is what the attribute declares; [`CircuitBreaker`] is one handler's breaker at
//! work, shared by the consumers of its main topic and retry levels (an outage is the
//! handler's, not one level's). Only transient failures and timeouts count: a permanent or
//! decode failure is the record's fault, not the dependency's. The clock is tokio's, so a
//! paused clock drives it in virtual time, like retry delays.

use std::fmt;
use std::time::Duration;

use crate::breaker_rules as rules;
use crate::failure::ErrorKind;

// One handler's breaker at work: its states, its metric handles.
mod circuit;
// The outcomes a closed breaker weighs: the last attempts, or a period's.
mod window;

pub(crate) use circuit::{BreakerHandles, CircuitBreaker};

/// What `#[retry_handler(..., breaker)]` declares: when a handler's failures mean its
/// dependency is down, and how it probes for the dependency's return.
///
/// The breaker **opens** when, over the window, at least `min_attempts` attempts concluded and
/// at least `failure_rate` percent of them failed transiently or timed out. While open, none of
/// the handler's consumers starts an attempt: records wait where they are (fetched ones in
/// memory, the rest in the topic, partitions held), nothing is handed on or dead-lettered
/// because of the outage, and a record whose attempt failed after the breaker opened is
/// attempted again later, its failure not counted. After the cool-down it is **half-open**:
/// `probes` attempts at a time; a success closes it, a failure opens it again with the
/// cool-down doubled, up to `max_cool_down`.
///
/// ```
/// use retry_kafka::handler::{Breaker, BreakerWindow};
/// use std::time::Duration;
///
/// let breaker = Breaker::default();
/// assert_eq!(breaker.failure_rate(), 50);
/// assert_eq!(breaker.window(), BreakerWindow::Attempts(100));
/// assert_eq!(breaker.min_attempts(), 20);
/// assert_eq!(breaker.cool_down(), Duration::from_secs(30));
/// assert_eq!(breaker.max_cool_down(), Duration::from_secs(300));
/// assert_eq!(breaker.probes(), 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breaker {
    failure_rate: u8,
    window: BreakerWindow,
    min_attempts: u32,
    cool_down_ms: u64,
    max_cool_down_ms: u64,
    probes: u32,
}

/// The outcomes a [`Breaker`] weighs: the last so many attempts, or those of the last so long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerWindow {
    /// The last `n` attempts concluded (`window = 100`).
    Attempts(u32),
    /// The attempts concluded in the last period (`window = "30s"`).
    Time(Duration),
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker::declared(50, 100, 30_000, 20, 30_000, 300_000, 1)
    }
}

impl Breaker {
    /// What `breaker(...)` declared, every option filled in (the macro checked each):
    /// `window_attempts` is 0 for a time window of `window_ms`.
    #[doc(hidden)]
    pub const fn declared(
        failure_rate: u8,
        window_attempts: u32,
        window_ms: u64,
        min_attempts: u32,
        cool_down_ms: u64,
        max_cool_down_ms: u64,
        probes: u32,
    ) -> Self {
        let window = if window_attempts > 0 {
            BreakerWindow::Attempts(window_attempts)
        } else {
            BreakerWindow::Time(Duration::from_millis(window_ms))
        };
        Breaker {
            failure_rate,
            window,
            min_attempts,
            cool_down_ms,
            max_cool_down_ms,
            probes,
        }
    }

    /// Opens at `percent` failed attempts (1 to 100; checked by
    /// [`AppBuilder::breaker`](crate::app::AppBuilder::breaker)'s `build`).
    ///
    /// ```
    /// use retry_kafka::handler::{Breaker, BreakerWindow};
    /// use std::time::Duration;
    ///
    /// let breaker = Breaker::default()
    ///     .with_failure_rate(80)
    ///     .with_window(BreakerWindow::Attempts(100))
    ///     .with_min_attempts(10)
    ///     .with_cool_down(Duration::from_secs(5))
    ///     .with_max_cool_down(Duration::from_secs(60))
    ///     .with_probes(2);
    /// assert_eq!((breaker.failure_rate(), breaker.probes()), (80, 2));
    /// assert!(breaker.check().is_ok());
    /// assert_eq!(
    ///     Breaker::default().with_failure_rate(0).check().unwrap_err().0,
    ///     "failure_rate"
    /// );
    /// ```
    pub fn with_failure_rate(mut self, percent: u8) -> Self {
        self.failure_rate = percent;
        self
    }

    /// Weighs the outcomes of `window`.
    pub fn with_window(mut self, window: BreakerWindow) -> Self {
        self.window = window;
        self
    }

    /// May open only after `attempts` attempts in the window (at least 1).
    pub fn with_min_attempts(mut self, attempts: u32) -> Self {
        self.min_attempts = attempts;
        self
    }

    /// Stays open `cool_down` the first time (longer than zero, at most `max_cool_down`).
    pub fn with_cool_down(mut self, cool_down: Duration) -> Self {
        self.cool_down_ms = cool_down.as_millis().min(u64::MAX as u128) as u64;
        self
    }

    /// Doubles the cool-down after each failed probe up to `max_cool_down`.
    pub fn with_max_cool_down(mut self, max_cool_down: Duration) -> Self {
        self.max_cool_down_ms = max_cool_down.as_millis().min(u64::MAX as u128) as u64;
        self
    }

    /// Lets `probes` attempts at a time through while half-open (1 to 1000).
    pub fn with_probes(mut self, probes: u32) -> Self {
        self.probes = probes;
        self
    }

    /// The settings' ranges, the same the attribute checks at compile time (one rule for both:
    /// `breaker_rules.rs`): the first setting out of range, and why.
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        rules::failure_rate(u64::from(self.failure_rate))?;
        match self.window {
            BreakerWindow::Attempts(n) => rules::window_attempts(u64::from(n))?,
            BreakerWindow::Time(period) => rules::window_ms(period.as_millis().min(u64::MAX as u128) as u64)?,
        }
        rules::min_attempts(u64::from(self.min_attempts))?;
        rules::cool_down_ms(self.cool_down_ms)?;
        rules::max_cool_down_ms(self.max_cool_down_ms, self.cool_down_ms)?;
        rules::probes(u64::from(self.probes))
    }

    /// The share of failed attempts, in percent, at or above which it opens.
    pub fn failure_rate(&self) -> u8 {
        self.failure_rate
    }

    /// The outcomes it weighs.
    pub fn window(&self) -> BreakerWindow {
        self.window
    }

    /// The fewest attempts in the window before it may open.
    pub fn min_attempts(&self) -> u32 {
        self.min_attempts
    }

    /// How long it stays open the first time before probing.
    pub fn cool_down(&self) -> Duration {
        Duration::from_millis(self.cool_down_ms)
    }

    /// The longest cool-down, however often probes fail.
    pub fn max_cool_down(&self) -> Duration {
        Duration::from_millis(self.max_cool_down_ms)
    }

    /// Probe attempts at a time while half-open.
    pub fn probes(&self) -> u32 {
        self.probes
    }
}

/// Where a breaker is: what [`App::health`](crate::App::health) reports per consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Attempts run.
    Closed,
    /// No attempt starts until the cool-down is over.
    Open,
    /// A few probe attempts run; the rest wait for their outcome.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half-open`: as logs, metrics and `/healthz` name it.
    pub fn as_str(&self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }

    fn from_u8(value: u8) -> Self {
        match value {
            0 => BreakerState::Closed,
            1 => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a concluded attempt counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Succeeded,
    /// A transient failure or a timeout: the dependency's.
    Failed,
    /// A permanent or decode failure: the record's, says nothing of the dependency.
    Ignored,
}

impl Outcome {
    /// How a failure of `kind` counts.
    pub(crate) fn of_failure(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::Transient | ErrorKind::Timeout => Outcome::Failed,
            _ => Outcome::Ignored,
        }
    }
}
