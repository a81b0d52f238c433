//! One handler's breaker at work, shared by its levels' consumers: open, half-open, closed, the
//! cool-down's growth, a log line and its metrics per transition.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use ::metrics::{Counter, Gauge};
use tokio::time::Instant;

use super::window::Window;
use super::{Breaker, BreakerState, Outcome};

/// How long a consumer waits before asking again while a probe of another consumer is under
/// way: the most a half-open breaker's closing can go unseen by a level that waits.
const PROBE_RECHECK: Duration = Duration::from_millis(100);

/// Successes a closed breaker counts on an atomic before it takes its lock to weigh them: a
/// lock and a clock read per success cost 15% of the success path's CPU (the throughput bench).
const PENDING_SUCCESSES: u32 = 256;

/// One handler's breaker at work, shared by its consumers.
pub(crate) struct CircuitBreaker {
    settings: Breaker,
    /// The [`BreakerState`] as a number, read without the lock: a closed breaker admits an
    /// attempt with one atomic load.
    state: AtomicU8,
    inner: Mutex<Inner>,
    handler: &'static str,
    topic: String,
    group: &'static str,
    /// Transitions by the state entered: open, half-open, closed (for `App::stats`).
    transitions: [AtomicU64; 3],
    handles: BreakerHandles,
    /// Successes of the closed breaker not yet in its window, and when the first of them came
    /// (ns after `started`).
    pending: AtomicU32,
    first_pending: AtomicU64,
    started: Instant,
}

/// A breaker's metric handles: its state, and its transitions by the state entered.
pub(crate) struct BreakerHandles {
    pub(crate) state: Gauge,
    /// Entered open, half-open and closed, in this order.
    pub(crate) entered: [Counter; 3],
}

struct Inner {
    phase: Phase,
    window: Window,
    /// The next cool-down: the declared one, doubled by each failed probe.
    cool_down: Duration,
}

enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: u32 },
}

impl CircuitBreaker {
    /// The breaker of `handler`, on `topic` (its main topic) in `group`, reporting to `handles`
    /// (made by `metrics::breaker_handles`, which owns the series' names).
    pub(crate) fn new(
        settings: Breaker,
        handler: &'static str,
        topic: &str,
        group: &'static str,
        handles: BreakerHandles,
    ) -> Self {
        handles.state.set(0.0);
        CircuitBreaker {
            settings,
            state: AtomicU8::new(0),
            inner: Mutex::new(Inner {
                phase: Phase::Closed,
                window: Window::new(settings.window),
                cool_down: settings.cool_down(),
            }),
            handler,
            topic: topic.to_owned(),
            group,
            transitions: Default::default(),
            handles,
            pending: AtomicU32::new(0),
            first_pending: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// How often it opened, went half-open and closed.
    pub(crate) fn transitions(&self) -> [u64; 3] {
        self.transitions.each_ref().map(|n| n.load(Ordering::Relaxed))
    }

    /// Where it is now.
    pub(crate) fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::Relaxed))
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether an attempt may start now (taking a probe's place when half-open), or when to
    /// ask again.
    pub(crate) fn admit(&self) -> Result<(), Instant> {
        if self.state.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let mut inner = self.inner();
        let now = Instant::now();
        match inner.phase {
            Phase::Closed => Ok(()),
            Phase::Open { until } if now < until => Err(until),
            Phase::Open { .. } => {
                self.enter(&mut inner, Phase::HalfOpen { probing: 1 });
                Ok(())
            }
            Phase::HalfOpen { ref mut probing } if *probing < self.settings.probes => {
                *probing += 1;
                Ok(())
            }
            Phase::HalfOpen { .. } => Err(now + PROBE_RECHECK),
        }
    }

    /// Counts a concluded attempt. Returns whether a failure is to be held back, not handed
    /// on: it came while the breaker is open, or opened it (the outage's, not the record's).
    pub(crate) fn conclude(&self, outcome: Outcome) -> bool {
        if self.state.load(Ordering::Relaxed) == BreakerState::Closed as u8 {
            match outcome {
                // Most outcomes: a success of a closed breaker is counted without the lock or
                // a clock read, and weighed in the window with the next failure (or batch).
                Outcome::Succeeded => {
                    let before = self.pending.fetch_add(1, Ordering::Relaxed);
                    if before == 0 {
                        self.first_pending.store(self.since_start(), Ordering::Relaxed);
                    }
                    if before + 1 >= PENDING_SUCCESSES {
                        self.fold(&mut self.inner());
                    }
                    return false;
                }
                Outcome::Ignored => return false,
                Outcome::Failed => {}
            }
        }
        let mut inner = self.inner();
        let now = Instant::now();
        // The successes before it, first: the window keeps their order.
        self.fold(&mut inner);
        match (&mut inner.phase, outcome) {
            (Phase::Closed, Outcome::Ignored) => false,
            (Phase::Closed, _) => {
                inner.window.add(now, outcome == Outcome::Failed);
                if outcome == Outcome::Succeeded || !inner.window.trips(&self.settings, now) {
                    return false;
                }
                let until = now + inner.cool_down;
                self.enter(&mut inner, Phase::Open { until });
                true
            }
            // Attempts started before it opened: a success says little, a failure waits.
            (Phase::Open { .. }, outcome) => outcome == Outcome::Failed,
            (Phase::HalfOpen { probing }, Outcome::Ignored) => {
                *probing = probing.saturating_sub(1);
                false
            }
            (Phase::HalfOpen { .. }, Outcome::Succeeded) => {
                inner.cool_down = self.settings.cool_down();
                inner.window = Window::new(self.settings.window);
                self.enter(&mut inner, Phase::Closed);
                false
            }
            (Phase::HalfOpen { .. }, Outcome::Failed) => {
                inner.cool_down = (inner.cool_down * 2).min(self.settings.max_cool_down());
                let until = now + inner.cool_down;
                self.enter(&mut inner, Phase::Open { until });
                true
            }
        }
    }

    /// Tokio's clock since the breaker was made, in ns (0 reads as "none pending").
    fn since_start(&self) -> u64 {
        (self.started.elapsed().as_nanos() as u64).max(1)
    }

    /// Weighs the successes counted without the lock in the window (a closed breaker's).
    fn fold(&self, inner: &mut Inner) {
        let count = self.pending.swap(0, Ordering::Relaxed);
        if count == 0 {
            return;
        }
        let first = Duration::from_nanos(self.first_pending.load(Ordering::Relaxed));
        if matches!(inner.phase, Phase::Closed) {
            inner.window.add_successes(self.started + first, count);
        }
    }

    /// Moves to `phase`: the state others read, the metrics, one log line.
    fn enter(&self, inner: &mut Inner, phase: Phase) {
        let state = match phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        };
        let (handler, topic, group) = (self.handler, &self.topic, self.group);
        match phase {
            Phase::Open { .. } => tracing::warn!(
                handler, %topic, group, cool_down = ?inner.cool_down,
                "circuit breaker opened: attempts stop until the cool-down is over; records wait, none is handed on"
            ),
            Phase::HalfOpen { .. } => tracing::info!(handler, %topic, group,
                probes = self.settings.probes, "circuit breaker half-open: probing"),
            Phase::Closed => {
                tracing::info!(handler, %topic, group, "circuit breaker closed: attempts run again")
            }
        }
        inner.phase = phase;
        self.state.store(state as u8, Ordering::Relaxed);
        self.handles.state.set(state as u8 as f64);
        let index = match state {
            BreakerState::Open => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Closed => 2,
        };
        self.handles.entered[index].increment(1);
        self.transitions[index].fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
