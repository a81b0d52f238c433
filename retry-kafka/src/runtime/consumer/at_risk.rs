//! Work at risk: whether one level may start attempts while its consumer's commits are behind.
//! A backend that commits asynchronously (Kafka) says when acknowledged work has waited past
//! its bound for a commit (the broker is gone, say); everything run from then on would run
//! again after a restart, so the level starts nothing new, and goes on once commits get
//! through. Attempts under way finish and are acknowledged meanwhile; the consumer stays in
//! its group (it stops fetching, and the backend pauses its partitions).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::backend::Consumer;
use crate::health::ConsumerHealth;

/// How often a stopped level asks its consumer again: the consumer's own check runs about as
/// often (Kafka's poll thread, every round).
const RECHECK: Duration = Duration::from_millis(100);

/// One level's view of its consumer's commits: read once per round of the loop (a load).
pub(super) struct CommitWatch {
    /// The level starts no attempt: its consumer's commits are behind.
    stopped: bool,
    /// Since when, for the line that says it resumed.
    since: Option<Instant>,
    /// Where `/healthz` reads it (`commits_behind`).
    health: Arc<ConsumerHealth>,
}

impl CommitWatch {
    pub(super) fn new(health: Arc<ConsumerHealth>) -> Self {
        Self {
            stopped: false,
            since: None,
            health,
        }
    }

    /// Asks the consumer, and logs when the answer changes. Returns whether attempts may start.
    pub(super) fn refresh<C: Consumer>(&mut self, consumer: &C, topic: &str, group: &str) -> bool {
        let behind = consumer.commits_behind();
        if behind != self.stopped {
            self.stopped = behind;
            self.health.commits_behind(behind);
            if behind {
                self.since = Some(Instant::now());
                tracing::warn!(
                    topic,
                    group,
                    "commits are not getting through: starting no attempt until they do (work at risk)"
                );
            } else {
                let stopped_for = self.since.take().map(|since| since.elapsed());
                tracing::info!(
                    topic,
                    group,
                    ?stopped_for,
                    "no work at risk any more (commits got through, or its partitions went): attempts resume"
                );
            }
        }
        !self.stopped
    }

    /// Whether the level starts no attempt, as of the last [`refresh`](Self::refresh).
    pub(super) fn stopped(&self) -> bool {
        self.stopped
    }

    /// When a stopped level must look again without being woken.
    pub(super) fn recheck_at(&self) -> Option<Instant> {
        self.stopped.then(|| Instant::now() + RECHECK)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::backend::{Fetched, HandOffId, HandOffReports, OutboundRecord, Position, Topic};
    use crate::error::BackendError;

    /// A consumer whose commits are behind when the test says so.
    struct Behind(Arc<AtomicBool>, HandOffReports);

    impl Consumer for Behind {
        async fn next(&mut self) -> Result<Fetched, BackendError> {
            std::future::pending().await
        }
        fn hold(&mut self, _: u32, _: u64) {}
        fn resume(&mut self, _: u32) {}
        fn hand_off(&mut self, _: HandOffId, _: Position, _: Topic, _: OutboundRecord) {
            unreachable!("no hand-off in this test")
        }
        fn hand_off_reports(&self) -> &HandOffReports {
            &self.1
        }
        async fn ack(&mut self, _: u32, _: u64) -> Result<(), BackendError> {
            Ok(())
        }
        async fn close(self) -> Result<(), BackendError> {
            Ok(())
        }
        fn commits_behind(&self) -> bool {
            self.0.load(Ordering::Relaxed)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_level_stops_while_its_commits_are_behind_and_looks_again_until_they_get_through() {
        let flag = Arc::new(AtomicBool::new(false));
        let consumer = Behind(flag.clone(), HandOffReports::new());
        let health = ConsumerHealth::new("app::charge", "orders", "billing", 0);
        let mut watch = CommitWatch::new(health.clone());
        let said = || health.report().commits_behind;
        assert!(watch.refresh(&consumer, "orders", "billing"));
        assert_eq!(watch.recheck_at(), None, "a running level is woken by its work");

        flag.store(true, Ordering::Relaxed);
        assert!(!watch.refresh(&consumer, "orders", "billing"));
        assert!(watch.stopped());
        assert!(said(), "health says so");
        assert_eq!(watch.recheck_at(), Some(Instant::now() + RECHECK));

        flag.store(false, Ordering::Relaxed);
        assert!(watch.refresh(&consumer, "orders", "billing"));
        assert!(!watch.stopped());
        assert!(!said());
        assert_eq!(watch.recheck_at(), None);
    }
}
