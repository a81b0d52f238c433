//! Counters per handler: what the quickstart prints and what metrics can hang on.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use crate::breaker::CircuitBreaker;
use crate::handlers::HandlerSpec;

/// Live counters of one handler, shared by its consumers. One relaxed increment per outcome.
pub(crate) struct Counters {
    pub(crate) spec: &'static HandlerSpec,
    succeeded: AtomicU64,
    failed: AtomicU64,
    retried: Box<[AtomicU64]>,
    dead_lettered: AtomicU64,
    parked: AtomicU64,
    dropped: AtomicU64,
    /// The handler's breaker, once the app started it: its transitions.
    breaker: OnceLock<Arc<CircuitBreaker>>,
}

impl Counters {
    pub(crate) fn new(spec: &'static HandlerSpec) -> Arc<Self> {
        Arc::new(Self {
            spec,
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            retried: spec.retries().map(|_| AtomicU64::new(0)).collect(),
            dead_lettered: AtomicU64::new(0),
            parked: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            breaker: OnceLock::new(),
        })
    }

    pub(crate) fn succeeded(&self) {
        self.succeeded.fetch_add(1, Relaxed);
    }

    pub(crate) fn failed(&self) {
        self.failed.fetch_add(1, Relaxed);
    }

    pub(crate) fn retried(&self, level: u32) {
        self.retried[level as usize - 1].fetch_add(1, Relaxed);
    }

    pub(crate) fn dead_lettered(&self) {
        self.dead_lettered.fetch_add(1, Relaxed);
    }

    pub(crate) fn parked(&self) {
        self.parked.fetch_add(1, Relaxed);
    }

    pub(crate) fn dropped(&self) {
        self.dropped.fetch_add(1, Relaxed);
    }

    /// Counts `breaker`'s transitions from now on.
    pub(crate) fn watch(&self, breaker: Arc<CircuitBreaker>) {
        let _ = self.breaker.set(breaker);
    }

    pub(crate) fn snapshot(&self) -> HandlerStats {
        let [opened, half_opened, closed] =
            self.breaker.get().map_or([0; 3], |breaker| breaker.transitions());
        HandlerStats {
            handler: self.spec.name(),
            succeeded: self.succeeded.load(Relaxed),
            failed: self.failed.load(Relaxed),
            retried: self.retried.iter().map(|c| c.load(Relaxed)).collect(),
            dead_lettered: self.dead_lettered.load(Relaxed),
            parked: self.parked.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            breaker_opened: opened,
            breaker_half_opened: half_opened,
            breaker_closed: closed,
        }
    }
}

/// What one handler has done since the app started.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandlerStats {
    /// The handler's full name.
    pub handler: &'static str,
    /// Attempts that succeeded (on any level).
    pub succeeded: u64,
    /// Attempts that failed.
    pub failed: u64,
    /// Messages handed to each retry level; index 0 is level 1.
    pub retried: Vec<u64>,
    /// Messages written to the dead-letter queue.
    pub dead_lettered: u64,
    /// Replayed dead letters that failed again, written to the parking queue.
    pub parked: u64,
    /// Messages dropped after their last attempt (`on_exhausted = "drop"`).
    pub dropped: u64,
    /// Times its circuit breaker opened (after failures, or after a failed probe).
    pub breaker_opened: u64,
    /// Times its circuit breaker went half-open (a cool-down over).
    pub breaker_half_opened: u64,
    /// Times its circuit breaker closed (a probe succeeded).
    pub breaker_closed: u64,
}

/// Counters of every running handler.
///
/// ```
/// # use retry_kafka::app::{HandlerStats, Stats};
/// # fn show(stats: &Stats) {
/// for handler in stats.iter() {
///     println!("{}: {} ok, {} dead-lettered", handler.handler, handler.succeeded, handler.dead_lettered);
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Stats {
    pub(crate) handlers: Vec<HandlerStats>,
}

impl Stats {
    /// The counters of the handler whose function (or full) name is `name`.
    pub fn handler(&self, name: &str) -> Option<&HandlerStats> {
        self.handlers
            .iter()
            .find(|h| h.handler == name || h.handler.rsplit("::").next() == Some(name))
    }

    /// Every handler's counters.
    pub fn iter(&self) -> impl Iterator<Item = &HandlerStats> {
        self.handlers.iter()
    }
}
