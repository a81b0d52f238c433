//! The reader's timers and its back-off: when to heartbeat, when to trim, when to send
//! acknowledgements that came while it waited, and what to do after a failed round.

use std::time::Duration;

use redis::RedisError;
use tokio::time::Instant;

use super::ACK_DELAY;
use crate::backend::redis::error::has_code;
use crate::clock::sleep_until_opt;

/// When the next heartbeat is due: a renewal of membership and leases, every third of the
/// session timeout, sooner after a failed one.
pub(super) struct Heartbeat {
    every: Duration,
    pub(super) next: Instant,
}

impl Heartbeat {
    pub(super) fn new(session_timeout: Duration) -> Self {
        Heartbeat {
            every: session_timeout / 3,
            next: Instant::now(),
        }
    }

    pub(super) fn is_due(&self) -> bool {
        Instant::now() >= self.next
    }

    /// After a renewal: the next one is a period away, or, when it failed, half a second at
    /// most.
    pub(super) fn renewed(&mut self, ok: bool) {
        let wait = if ok {
            self.every
        } else {
            self.every.min(Duration::from_millis(500))
        };
        self.next = Instant::now() + wait;
    }
}

/// A fixed period, for trimming.
pub(super) struct Every {
    period: Duration,
    next: Instant,
}

impl Every {
    pub(super) fn new(period: Duration) -> Self {
        Every {
            period,
            next: Instant::now() + period,
        }
    }

    /// Whether the period is over, starting the next one if so.
    pub(super) fn elapsed(&mut self) -> bool {
        let now = Instant::now();
        if now < self.next {
            return false;
        }
        self.next = now + self.period;
        true
    }
}

/// Acknowledgements made while the reader waits go out within [`ACK_DELAY`], in one round trip
/// however many there are (a read sends them sooner).
#[derive(Default)]
pub(super) struct AckDebounce {
    due: Option<Instant>,
}

impl AckDebounce {
    pub(super) fn is_waiting(&self) -> bool {
        self.due.is_some()
    }

    /// The first acknowledgement since the last flush: flush within [`ACK_DELAY`].
    pub(super) fn start(&mut self) {
        self.due = Some(Instant::now() + ACK_DELAY);
    }

    /// Waits for the flush; ready at once to be started again.
    pub(super) async fn elapsed(&mut self) {
        sleep_until_opt(self.due).await;
        self.due = None;
    }
}

/// Failed rounds in a row, and what to do about the last.
#[derive(Default)]
pub(super) struct Recovery {
    failures: u32,
}

/// What the reader does after a failed round.
pub(super) enum Recover {
    /// The server lost the consumer group: create it again and go on.
    CreateGroup,
    /// Wait this long, then go on.
    Pause(Duration),
}

impl Recovery {
    pub(super) fn succeeded(&mut self) {
        self.failures = 0;
    }

    pub(super) fn failed(&mut self, error: &RedisError) -> Recover {
        self.failures += 1;
        if has_code(error, "NOGROUP") {
            // A restart without persistence, or the stream was deleted.
            return Recover::CreateGroup;
        }
        Recover::Pause(Duration::from_millis(100 * u64::from(self.failures.min(20))))
    }
}
