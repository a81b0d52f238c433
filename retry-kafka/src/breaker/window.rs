//! The outcomes a closed breaker weighs: the last so many attempts, or those of the last so
//! long in buckets of a tenth of it.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::{Breaker, BreakerWindow};

/// Buckets of a time window: outcomes older than the window leave a tenth of it at a time.
const BUCKETS: u32 = 10;

/// The outcomes a closed breaker weighs.
pub(super) enum Window {
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
    pub(super) fn new(window: BreakerWindow) -> Self {
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

    pub(super) fn add(&mut self, now: Instant, failed_now: bool) {
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
    pub(super) fn add_successes(&mut self, at: Instant, count: u32) {
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
    pub(super) fn counts(&mut self, now: Instant) -> (u32, u32) {
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
    pub(super) fn trips(&mut self, settings: &Breaker, now: Instant) -> bool {
        let (attempts, failed) = self.counts(now);
        attempts >= settings.min_attempts
            && attempts > 0
            && u64::from(failed) * 100 >= u64::from(settings.failure_rate) * u64::from(attempts)
    }
}
