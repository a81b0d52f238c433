//! Consumer lag for the `retry_kafka_consumer_lag` gauge: one task asks the backend, often
//! while a level settles messages and seldom otherwise.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, Topic};
use crate::metrics::LevelMetrics;

/// One level's consumer lag: where to ask, and the level's metrics, whose gauge it sets.
pub(super) struct Lag {
    pub(super) topic: Topic,
    pub(super) group: String,
    pub(super) metrics: Arc<LevelMetrics>,
}

/// How often a level's lag is asked while it settles messages.
const LAG_WHILE_SETTLING: Duration = Duration::from_secs(1);
/// Rounds a level's lag is still asked after its last settled message: what it acknowledged is
/// committed within them (Kafka commits every 100 ms, or 1 s at worst).
const LAG_ROUNDS_AFTER: u32 = 2;

/// When the lag task asks: every `interval`, and whenever `wake` says a level settled messages.
pub(super) struct LagPace {
    pub(super) interval: Duration,
    pub(super) wake: Arc<Notify>,
}

/// Sets each level's lag gauge until `stop`: every [`LAG_WHILE_SETTLING`] for a level that
/// settles messages and for [`LAG_ROUNDS_AFTER`] rounds after its last, so the gauge follows
/// its commits within about 3 s; every `interval` for every level besides (a level that
/// settles nothing while messages arrive). It sleeps while nothing settles. A backend that
/// cannot say leaves the gauge as it was.
pub(super) async fn report_lag<B: Backend>(
    backend: B,
    lags: Vec<Lag>,
    pace: LagPace,
    stop: CancellationToken,
) {
    // Rounds since each level last settled something; past LAG_ROUNDS_AFTER it is quiet.
    let mut rounds_since = vec![u32::MAX; lags.len()];
    let mut next_full = Instant::now();
    loop {
        let now = Instant::now();
        let full = now >= next_full;
        if full {
            next_full = now + pace.interval;
        }
        for (lag, since) in lags.iter().zip(&mut rounds_since) {
            *since = match lag.metrics.take_lag_moved() {
                true => 0,
                false => since.saturating_add(1),
            };
            if !full && *since > LAG_ROUNDS_AFTER {
                continue;
            }
            let asked = tokio::select! {
                _ = stop.cancelled() => return,
                asked = backend.lag(&lag.topic, &lag.group) => asked,
            };
            match asked {
                Ok(messages) => lag.metrics.set_lag(messages),
                Err(error) => {
                    tracing::debug!(topic = %lag.topic, group = %lag.group, %error, "consumer lag unknown")
                }
            }
        }
        let settling = rounds_since.iter().any(|&since| since < LAG_ROUNDS_AFTER);
        let next = match settling {
            true => next_full.min(Instant::now() + LAG_WHILE_SETTLING),
            false => next_full,
        };
        let mut woken = false;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
            _ = pace.wake.notified(), if !settling => woken = true,
        }
        if woken {
            // What settled is acknowledged, then committed, a moment later: ask after that.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(LAG_WHILE_SETTLING) => {}
            }
        }
    }
}
