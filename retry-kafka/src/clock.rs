//! Time as the runtime and the backends see it: epoch milliseconds on tokio's clock (due times
//! cross processes, and a paused tokio clock drives them in virtual time).

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Wall-clock time in epoch milliseconds, advanced by tokio's clock.
///
/// Due times cross processes, so they are epoch ms; they are measured on tokio's clock so a
/// test that pauses time (`tokio::time::pause`) drives retry delays in virtual time.
pub(crate) fn now_ms() -> i64 {
    static ANCHOR: OnceLock<(i64, Instant)> = OnceLock::new();
    let (epoch_ms, instant) = ANCHOR.get_or_init(|| {
        let epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        (epoch.as_millis() as i64, Instant::now())
    });
    epoch_ms + Instant::now().saturating_duration_since(*instant).as_millis() as i64
}

/// The tokio instant at which epoch-ms time `due_ms` arrives.
pub(crate) fn instant_at(due_ms: i64) -> Instant {
    let wait = due_ms.saturating_sub(now_ms()).max(0) as u64;
    Instant::now() + Duration::from_millis(wait)
}

/// Sleeps until `at`, or forever: a `select!` branch that is off while there is no deadline.
pub(crate) async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
