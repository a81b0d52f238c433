//! Stopping an app: the [`ShutdownHandle`] anyone may hold, and what a consumer sees of it (the
//! request and the drain deadline). A leaf: health reads it, the runtime and its consumers
//! act on it, and it imports neither.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Stops a running [`App`](crate::App): fetching stops, in-flight handlers get the shutdown
/// timeout to finish, what finished is acknowledged, and the consumers leave their groups.
///
/// ```
/// let handle = retry_kafka::app::ShutdownHandle::default();
/// let stopper = handle.clone(); // e.g. moved into an admin endpoint
/// stopper.shutdown();
/// assert!(handle.is_shutdown());
/// ```
#[derive(Clone, Default)]
pub struct ShutdownHandle {
    token: CancellationToken,
    requested_at: Arc<OnceLock<Instant>>,
}

impl ShutdownHandle {
    /// Requests shutdown. Idempotent.
    pub fn shutdown(&self) {
        self.requested_at.get_or_init(Instant::now);
        self.token.cancel();
    }

    /// Whether shutdown was requested.
    pub fn is_shutdown(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once shutdown is requested.
    pub(crate) async fn requested(&self) {
        self.token.cancelled().await
    }
}

/// What a consumer sees of shutdown: the request and the drain deadline.
#[derive(Clone)]
pub(crate) struct Shutdown {
    pub(crate) handle: ShutdownHandle,
    pub(crate) timeout: Duration,
}

impl Shutdown {
    pub(crate) async fn requested(&self) {
        self.handle.requested().await
    }

    /// When in-flight work must have finished; `None` until shutdown is requested.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.handle.requested_at.get().map(|at| *at + self.timeout)
    }
}
