//! The rebalance callbacks' side of a consumer: what librdkafka reports inside `poll` (the
//! rebalances, kept for the poll thread to put in order with the records; the statistics, for
//! the committed offsets; the errors, for the refusals), and on a revoke the settled work
//! committed first and the followers' partitions given up before this member's.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::{ClientContext, Statistics, TopicPartitionList};

use super::commits::AckRequest;
use super::committer::Committer;
use super::settle::Settlement;
use super::transaction::Committed;
use crate::backend::follow::Followers;
use crate::backend::kafka::Refusals;

/// Collects rebalance events raised inside `poll`, so the thread can put them in order with
/// the records.
pub(super) struct RebalanceLog {
    pub(super) topic: String,
    pub(super) events: Mutex<Vec<RebalanceEvent>>,
    /// Whether `events` has something: checked after every poll without taking the lock.
    pub(super) pending: AtomicBool,
    /// Asks the handle for the acknowledgements it holds.
    pub(super) ack_request: Arc<AckRequest>,
    /// The acknowledgements, stored as offsets: by the poll thread, and by the revoke callback.
    pub(super) settlement: Mutex<Settlement>,
    /// The consumer is closing: the handle sent everything already; a revoke waits for nothing.
    pub(super) closing: AtomicBool,
    /// The refusals this consumer was given.
    pub(super) refusals: Refusals,
    /// Settled work waits past its bound for a commit: set by the poll thread, read by the
    /// handle ([`Consumer::commits_behind`](crate::backend::Consumer::commits_behind)).
    pub(super) commits_behind: Arc<AtomicBool>,
    /// Records of an assignment generation below this are stale: set when the member is left
    /// with no partition (its assignment was lost, say, when the broker was gone past the
    /// session timeout), so the handle drops the batches still in the channel at once, rather
    /// than running up to `CHANNEL_BATCHES` batches of work whose commits cannot succeed.
    pub(super) stale_below: Arc<AtomicU64>,
    /// The consumers that read what this one is assigned (a key-ordered handler's levels).
    pub(super) followers: Option<Arc<Followers>>,
    /// Exactly-once: the transaction that commits this consumer's hand-offs and offsets, and
    /// the thread its commits run on.
    pub(super) transaction: Option<Committer>,
    /// A transaction aborted: the partitions kept are to be read again from their committed
    /// offsets (the poll thread's next round).
    pub(super) rewind: AtomicBool,
}

/// Why a commit of what was settled failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum CommitError {
    #[error(transparent)]
    Offsets(#[from] KafkaError),
    #[error("the transaction aborted: its hand-offs and offsets were taken back, and its records run again")]
    Aborted,
}

pub(super) enum RebalanceEvent {
    Assigned(Vec<u32>),
    Revoked(Vec<u32>),
}

impl RebalanceLog {
    pub(super) fn new(
        topic: String,
        ack_request: Arc<AckRequest>,
        settlement: Settlement,
        commits_behind: Arc<AtomicBool>,
        stale_below: Arc<AtomicU64>,
        followers: Option<Arc<Followers>>,
        transaction: Option<Committer>,
    ) -> Self {
        RebalanceLog {
            followers,
            transaction,
            rewind: AtomicBool::new(false),
            topic,
            ack_request,
            commits_behind,
            stale_below,
            settlement: Mutex::new(settlement),
            closing: AtomicBool::new(false),
            events: Mutex::new(Vec::new()),
            pending: AtomicBool::new(false),
            refusals: Refusals::new("consumer"),
        }
    }

    pub(super) fn log(&self, event: RebalanceEvent) {
        self.events.lock().expect("never poisoned").push(event);
        self.pending.store(true, Ordering::Release);
    }

    /// Only the poll thread takes it (in a round, or in a callback inside `poll`): never
    /// contended.
    pub(super) fn settlement(&self) -> std::sync::MutexGuard<'_, Settlement> {
        self.settlement.lock().expect("never poisoned")
    }

    /// Commits what was settled: the offsets stored in librdkafka, or (exactly-once) the
    /// transaction with each partition's acknowledged prefix; `leaving` are given up after it.
    pub(super) fn commit(
        &self,
        consumer: &BaseConsumer<Self>,
        mode: CommitMode,
        leaving: &[u32],
    ) -> Result<(), CommitError> {
        let Some(committer) = &self.transaction else {
            return Ok(consumer.commit_consumer_state(mode)?);
        };
        // The commit under way on the committer thread first: one at a time, in order.
        if let Some(earlier) = committer.wait() {
            self.committed(earlier)?;
        }
        let floors = self.settlement().floors();
        self.committed(committer.transaction().commit(consumer, &floors, leaving))
    }

    /// Exactly-once: starts a commit of the transaction on the committer thread (its outcome
    /// is taken by [`take_committed`](Self::take_committed)). False when one is under way.
    pub(super) fn commit_in_background(&self, consumer: &BaseConsumer<Self>) -> bool {
        let Some(committer) = &self.transaction else {
            return false;
        };
        if committer.busy() {
            return false;
        }
        let floors = self.settlement().floors();
        match committer.transaction().prepare(consumer, &floors, &[]) {
            Ok(ready) => committer.submit(ready),
            Err(outcome) => {
                let _ = self.committed(outcome);
            }
        }
        true
    }

    /// Exactly-once: the outcome of the commit the committer thread finished, if any.
    pub(super) fn take_committed(&self) {
        if let Some(outcome) = self.transaction.as_ref().and_then(Committer::take) {
            if let Err(error) = self.committed(outcome) {
                tracing::debug!(topic = %self.topic, %error, "commit");
            }
        }
    }

    /// What a transaction's commit means for the settled records: committed through its
    /// offsets, or (aborted) to be read again.
    fn committed(&self, outcome: Committed) -> Result<(), CommitError> {
        match outcome {
            Committed::Through(through) => {
                let now = Instant::now();
                let mut settlement = self.settlement();
                for (partition, next) in through {
                    settlement.committed(partition, next, now);
                }
                Ok(())
            }
            Committed::Nothing | Committed::Waits => Ok(()),
            Committed::Aborted => {
                self.rewind.store(true, Ordering::Release);
                Err(CommitError::Aborted)
            }
        }
    }

    pub(super) fn take(&self) -> Vec<RebalanceEvent> {
        if !self.pending.swap(false, Ordering::Acquire) {
            return Vec::new();
        }
        std::mem::take(&mut *self.events.lock().expect("never poisoned"))
    }

    fn partitions(&self, list: &TopicPartitionList) -> Vec<u32> {
        list.elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .map(|e| e.partition() as u32)
            .collect()
    }
}

impl ClientContext for RebalanceLog {
    fn error(&self, error: KafkaError, reason: &str) {
        self.refusals.note(&error, reason);
    }

    /// librdkafka's statistics (every `STATS_INTERVAL`): the committed offset of each
    /// partition, whoever's commit moved it. The only report of an asynchronous commit:
    /// librdkafka reports those to an `offset_commit_cb` only, which rdkafka does not set (it
    /// asks for commit events, which only the auto-commit sends). Runs inside `poll`, on the
    /// poll thread.
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let now = Instant::now();
        let mut settlement = self.settlement();
        for (&partition, stats) in &topic.partitions {
            // -1 is librdkafka's unassigned partition; a negative offset is none committed yet.
            if partition >= 0 && stats.committed_offset >= 0 {
                settlement.committed(partition as u32, stats.committed_offset as u64, now);
            }
        }
    }
}

impl ConsumerContext for RebalanceLog {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let revoked = self.partitions(list);
            // Followers first: the partitions leave this process on every level together.
            if let Some(followers) = &self.followers {
                followers.give_up(&revoked).wait_blocking(&self.topic);
            }
            // Store what the runtime acknowledged, and what it acknowledges for a moment more,
            // then commit it before the partitions go to another member. A lost assignment (the
            // session expired) has nothing to commit to.
            if !self.closing.load(Ordering::Acquire) && !consumer.assignment_lost() {
                self.settlement()
                    .drain_for_revoke(consumer, &self.topic, &revoked, &self.ack_request);
            }
            if let Err(error) = self.commit(consumer, CommitMode::Sync, &revoked) {
                tracing::debug!(topic = %self.topic, %error, "commit on revoke");
            }
            tracing::debug!(topic = %self.topic, ?revoked, "partitions revoked");
            self.log(RebalanceEvent::Revoked(revoked));
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let assigned = self.partitions(list);
                tracing::debug!(topic = %self.topic, ?assigned, "partitions assigned");
                if let Some(followers) = &self.followers {
                    followers.take(&assigned);
                }
                self.log(RebalanceEvent::Assigned(assigned));
            }
            Rebalance::Error(error) => tracing::warn!(topic = %self.topic, %error, "rebalance failed"),
            Rebalance::Revoke(_) => {}
        }
    }
}
