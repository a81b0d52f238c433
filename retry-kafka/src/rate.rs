//! Rate limits: `rate = "200/s"` on a handler caps how many attempts it starts per period in
//! the process, over all its levels, so a retry storm never exceeds what the downstream takes.
//!
//! The limiter is `governor`'s GCRA, on tokio's clock (so a paused clock in a test drives it in
//! virtual time, like retry delays).

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// How many attempts a handler may start per period: `rate = "200/s"` (also `/m` and `/h`).
///
/// Attempts are spaced evenly at `period / attempts`; after a quiet spell, up to 50 ms worth
/// of them (at least one) may start back to back, so a consumer that was briefly late catches
/// up without going over the rate for long. Each record of a batch handler is an attempt: it
/// takes its token as it joins a batch.
///
/// ```
/// use retry_kafka::handler::Rate;
/// use std::time::Duration;
///
/// let rate = Rate::new(200, Duration::from_secs(1)).unwrap();
/// assert_eq!((rate.attempts(), rate.per()), (200, Duration::from_secs(1)));
/// assert_eq!(rate.interval(), Duration::from_millis(5));
/// assert_eq!(rate.to_string(), "200/s");
/// assert!(Rate::new(0, Duration::from_secs(1)).is_none());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    attempts: u32,
    per_ms: u64,
}

/// The burst allowance: this much time's worth of attempts may start back to back.
const BURST_WINDOW: Duration = Duration::from_millis(50);

impl Rate {
    /// `attempts` per `per`; `None` when either is zero.
    pub fn new(attempts: u32, per: Duration) -> Option<Self> {
        let per_ms = u64::try_from(per.as_millis()).ok()?;
        (attempts > 0 && per_ms > 0).then_some(Rate { attempts, per_ms })
    }

    /// What `rate = "..."` declared; the macro checked both are above zero.
    #[doc(hidden)]
    pub const fn declared(attempts: u32, per_ms: u64) -> Self {
        Rate { attempts, per_ms }
    }

    /// Attempts per period.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The period.
    pub fn per(&self) -> Duration {
        Duration::from_millis(self.per_ms)
    }

    /// The spacing between attempts: `per / attempts`.
    pub fn interval(&self) -> Duration {
        // Saturating: a period of centuries is "never", not an overflow.
        Duration::from_nanos((self.per_ms.saturating_mul(1_000_000) / self.attempts as u64).max(1))
    }

    /// How many attempts may start back to back: 50 ms worth, at least one.
    fn burst(&self) -> NonZeroU32 {
        let window = (BURST_WINDOW.as_nanos() / self.interval().as_nanos()) as u32;
        NonZeroU32::new(window.min(self.attempts).max(1)).expect("at least 1")
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.per_ms {
            1_000 => write!(f, "{}/s", self.attempts),
            60_000 => write!(f, "{}/m", self.attempts),
            3_600_000 => write!(f, "{}/h", self.attempts),
            ms if ms % 1_000 == 0 => write!(f, "{}/{}s", self.attempts, ms / 1_000),
            ms => write!(f, "{}/{ms}ms", self.attempts),
        }
    }
}

/// tokio's clock for `governor`: nanoseconds since the limiter was made.
#[derive(Debug, Clone)]
struct TokioClock {
    start: tokio::time::Instant,
}

impl Clock for TokioClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.start.elapsed())
    }
}

/// One handler's limiter, shared by its levels' consumers.
pub(crate) struct AttemptRate {
    limiter: RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Nanos>>,
    clock: TokioClock,
}

impl AttemptRate {
    /// A limiter for `rate`.
    pub(crate) fn new(rate: Rate) -> Self {
        let quota = Quota::with_period(rate.interval())
            .expect("the interval is above zero")
            .allow_burst(rate.burst());
        let clock = TokioClock {
            start: tokio::time::Instant::now(),
        };
        AttemptRate {
            limiter: RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
        }
    }

    /// Takes the token of one attempt now, or says when the next one comes.
    pub(crate) fn admit(&self) -> Result<(), tokio::time::Instant> {
        self.limiter
            .check()
            .map_err(|not_until| tokio::time::Instant::now() + not_until.wait_time_from(self.clock.now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_is_fifty_milliseconds_worth() {
        let per_second = |n| Rate::new(n, Duration::from_secs(1)).unwrap();
        assert_eq!(per_second(200).burst().get(), 10);
        assert_eq!(per_second(5).burst().get(), 1);
        assert_eq!(Rate::new(30, Duration::from_secs(60)).unwrap().burst().get(), 1);
    }

    #[test]
    fn a_period_of_centuries_does_not_overflow() {
        let rate = Rate::new(1, Duration::from_millis(u64::MAX)).unwrap();
        assert_eq!(rate.interval(), Duration::from_nanos(u64::MAX));
        let _limiter = AttemptRate::new(rate);
    }

    #[tokio::test(start_paused = true)]
    async fn admits_at_the_rate_in_virtual_time() {
        let rate = AttemptRate::new(Rate::new(100, Duration::from_secs(1)).unwrap());
        let start = tokio::time::Instant::now();
        let mut admitted = 0;
        while start.elapsed() < Duration::from_secs(10) {
            match rate.admit() {
                Ok(()) => admitted += 1,
                Err(at) => tokio::time::sleep_until(at).await,
            }
        }
        // 10 s at 100/s, plus the burst of 5 at the start.
        assert!((1000..=1006).contains(&admitted), "{admitted}");
    }
}
