//! Circuit breakers: `breaker` on a handler stops its attempts while the service it calls is
//! down, instead of walking every record through every retry level into the dead letters.
//!
//! [`Breaker`] is what the attribute declares; [`CircuitBreaker`] is one handler's breaker at
//! work, shared by the consumers of its main topic and retry levels (an outage is the
//! handler's, not one level's). Only transient failures and timeouts count: a permanent or
//! decode failure is the record's fault, not the dependency's. The clock is tokio's, so a
//! paused clock drives it in virtual time, like retry delays.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use ::metrics::{Counter, Gauge};
use tokio::time::Instant;

use crate::breaker_rules as rules;
use crate::failure::ErrorKind;

/// How long a consumer waits before asking again while a probe of another consumer is under
/// way: the most a half-open breaker's closing can go unseen by a level that waits.
const PROBE_RECHECK: Duration = Duration::from_millis(100);

/// Buckets of a time window: outcomes older than the window leave a tenth of it at a time.
const BUCKETS: u32 = 10;

/// Successes a closed breaker counts on an atomic before it takes its lock to weigh them: a
/// lock and a clock read per success cost 15% of the success path's CPU (the throughput bench).
const PENDING_SUCCESSES: u32 = 256;

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

/// The outcomes a closed breaker weighs.
enum Window {
    /// The last `limit` outcomes, `true` for a failure.
    Attempts {
        limit: usize,
        outcomes: VecDeque<bool>,
        failed: u32,
    },
    /// Counts per tenth of the period, oldest first: (start, attempts, failed).
    Time {
        bucket: Duration,
        buckets: VecDeque<(Instant, u32, u32)>,
    },
}

impl Window {
    fn new(window: BreakerWindow) -> Self {
        match window {
            BreakerWindow::Attempts(limit) => Window::Attempts {
                limit: limit as usize,
                outcomes: VecDeque::with_capacity(limit as usize),
                failed: 0,
            },
            BreakerWindow::Time(period) => Window::Time {
                bucket: (period / BUCKETS).max(Duration::from_millis(1)),
                buckets: VecDeque::with_capacity(BUCKETS as usize + 1),
            },
        }
    }

    fn add(&mut self, now: Instant, failed_now: bool) {
        match self {
            Window::Attempts {
                limit,
                outcomes,
                failed,
            } => {
                if outcomes.len() == *limit && outcomes.pop_front() == Some(true) {
                    *failed -= 1;
                }
                outcomes.push_back(failed_now);
                *failed += failed_now as u32;
            }
            Window::Time { bucket, buckets } => {
                Self::expire(*bucket, buckets, now);
                match buckets.back_mut() {
                    Some((start, attempts, failed)) if now < *start + *bucket => {
                        *attempts += 1;
                        *failed += failed_now as u32;
                    }
                    _ => buckets.push_back((now, 1, failed_now as u32)),
                }
            }
        }
    }

    /// `count` successes, the first at `at` (they count from then: at a low rate, those older
    /// than the window leave it a little early rather than late).
    fn add_successes(&mut self, at: Instant, count: u32) {
        match self {
            Window::Attempts {
                limit,
                outcomes,
                failed,
            } => {
                for _ in 0..(count as usize).min(*limit) {
                    if outcomes.len() == *limit && outcomes.pop_front() == Some(true) {
                        *failed -= 1;
                    }
                    outcomes.push_back(false);
                }
            }
            Window::Time { bucket, buckets } => match buckets.back_mut() {
                // Into the newest bucket when it began after them: buckets stay in order.
                Some((start, attempts, _)) if at < *start + *bucket => *attempts += count,
                _ => buckets.push_back((at, count, 0)),
            },
        }
    }

    fn expire(bucket: Duration, buckets: &mut VecDeque<(Instant, u32, u32)>, now: Instant) {
        let span = bucket * BUCKETS;
        while buckets.front().is_some_and(|(start, ..)| *start + span <= now) {
            buckets.pop_front();
        }
    }

    /// Attempts and failures in the window now.
    fn counts(&mut self, now: Instant) -> (u32, u32) {
        match self {
            Window::Attempts { outcomes, failed, .. } => (outcomes.len() as u32, *failed),
            Window::Time { bucket, buckets } => {
                Self::expire(*bucket, buckets, now);
                buckets
                    .iter()
                    .fold((0, 0), |(a, f), (_, attempts, failed)| (a + attempts, f + failed))
            }
        }
    }

    /// Whether the window's failures open a breaker of `settings`.
    fn trips(&mut self, settings: &Breaker, now: Instant) -> bool {
        let (attempts, failed) = self.counts(now);
        attempts >= settings.min_attempts
            && attempts > 0
            && u64::from(failed) * 100 >= u64::from(settings.failure_rate) * u64::from(attempts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(window_attempts: u32, window_ms: u64) -> CircuitBreaker {
        let settings = Breaker::declared(50, window_attempts, window_ms, 4, 1_000, 4_000, 1);
        let handles = BreakerHandles {
            state: Gauge::noop(),
            entered: [Counter::noop(), Counter::noop(), Counter::noop()],
        };
        CircuitBreaker::new(settings, "tests::charge", "orders", "billing", handles)
    }

    #[tokio::test(start_paused = true)]
    async fn it_opens_at_the_failure_rate_once_enough_attempts_concluded() {
        let breaker = breaker(10, 0);
        // Three failures of three: under `min_attempts` (4), so it stays closed.
        for _ in 0..3 {
            assert!(!breaker.conclude(Outcome::Failed));
        }
        // Permanent failures are the record's: not counted.
        assert!(!breaker.conclude(Outcome::Ignored));
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.admit().is_ok());
        // The fourth: 4 of 4 failed, the failure that opens it is held back.
        assert!(breaker.conclude(Outcome::Failed));
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.admit(), Err(Instant::now() + Duration::from_secs(1)));
        // Attempts that were under way: a failure is held back too, a success changes nothing.
        assert!(breaker.conclude(Outcome::Failed));
        assert!(!breaker.conclude(Outcome::Succeeded));
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn under_the_rate_it_stays_closed() {
        let breaker = breaker(4, 0);
        for outcome in [
            Outcome::Failed,
            Outcome::Succeeded,
            Outcome::Succeeded,
            Outcome::Succeeded,
        ] {
            assert!(!breaker.conclude(outcome), "1 failure of 4: 25%");
        }
        // The oldest outcome (the failure) leaves as the next comes.
        assert!(!breaker.conclude(Outcome::Failed), "1 failure of the last 4");
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.conclude(Outcome::Failed), "2 of the last 4: 50%");
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_time_window_forgets_what_is_older_than_its_period() {
        let breaker = breaker(0, 10_000);
        for _ in 0..3 {
            assert!(!breaker.conclude(Outcome::Failed));
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        // The three failures left the window: 1 attempt now, under `min_attempts`.
        assert!(!breaker.conclude(Outcome::Failed));
        for _ in 0..2 {
            assert!(!breaker.conclude(Outcome::Failed));
        }
        assert!(breaker.conclude(Outcome::Failed), "4 in the window, all failed");
    }

    #[tokio::test(start_paused = true)]
    async fn successes_counted_without_the_lock_keep_their_time_and_their_order() {
        // Ten successes, then the window's period passes: when failures come, the successes
        // weighed with them are those of 11 s ago, out of the window.
        let timed = breaker(0, 10_000);
        for _ in 0..10 {
            assert!(!timed.conclude(Outcome::Succeeded));
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        for _ in 0..3 {
            assert!(!timed.conclude(Outcome::Failed));
        }
        assert!(timed.conclude(Outcome::Failed), "4 of 4 in the window failed");
        // A count window: the successes come before the failure that follows them.
        let counted = breaker(4, 0);
        for outcome in [
            Outcome::Failed,
            Outcome::Failed,
            Outcome::Succeeded,
            Outcome::Succeeded,
        ] {
            assert!(!counted.conclude(outcome));
        }
        assert!(!counted.conclude(Outcome::Succeeded));
        assert!(!counted.conclude(Outcome::Failed), "the last 4: S, S, S, F");
        assert!(counted.conclude(Outcome::Failed), "the last 4: S, S, F, F");
        // More successes than the batch: weighed as they pass it, without a failure.
        let busy = breaker(0, 10_000);
        for _ in 0..PENDING_SUCCESSES * 2 {
            busy.conclude(Outcome::Succeeded);
        }
        assert_eq!(busy.pending.load(Ordering::Relaxed), 0);
        assert_eq!(
            busy.inner().window.counts(Instant::now()),
            (PENDING_SUCCESSES * 2, 0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_probes_one_at_a_time_and_the_cool_down_grows_up_to_its_cap() {
        let breaker = breaker(4, 0);
        for _ in 0..4 {
            breaker.conclude(Outcome::Failed);
        }
        let mut cool_downs = Vec::new();
        for _ in 0..4 {
            let until = breaker.admit().expect_err("open");
            cool_downs.push(until - Instant::now());
            tokio::time::advance(until - Instant::now()).await;
            assert_eq!(breaker.admit(), Ok(()), "the probe");
            assert_eq!(breaker.state(), BreakerState::HalfOpen);
            let recheck = breaker.admit().expect_err("one probe at a time");
            assert_eq!(recheck - Instant::now(), PROBE_RECHECK);
            assert!(breaker.conclude(Outcome::Failed), "a failed probe is held back");
            assert_eq!(breaker.state(), BreakerState::Open);
        }
        let secs = |s| Duration::from_secs(s);
        assert_eq!(cool_downs, [secs(1), secs(2), secs(4), secs(4)]);
        // A permanent failure of the probe says nothing: another probe may go.
        tokio::time::advance(secs(4)).await;
        assert_eq!(breaker.admit(), Ok(()));
        assert!(!breaker.conclude(Outcome::Ignored));
        assert_eq!(breaker.admit(), Ok(()), "the probe's place is free again");
        assert!(!breaker.conclude(Outcome::Succeeded));
        assert_eq!(breaker.state(), BreakerState::Closed);
        // Closed again, from a fresh window and the declared cool-down.
        for _ in 0..3 {
            assert!(!breaker.conclude(Outcome::Failed));
        }
        assert!(breaker.conclude(Outcome::Failed));
        assert_eq!(breaker.admit(), Err(Instant::now() + secs(1)));
        assert_eq!(breaker.transitions(), [6, 5, 1], "opened, half-opened, closed");
    }
}
