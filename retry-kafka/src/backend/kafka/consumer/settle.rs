//! What the runtime settled, stored as offsets for the next commit. The poll thread stores
//! once per round; the revoke callback (inside `poll`, on the same thread) stores what has
//! arrived and, for up to `REVOKE_DRAIN`, what the runtime acknowledges meanwhile, before the
//! partitions go: acknowledgements still on their way when a partition was revoked used to be
//! dropped, and their records redelivered to the new owner.

use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

use super::commits::AckRequest;
use super::{Acks, ByPartition};

/// How long a revoke waits for the acknowledgements of records the runtime was given: attempts
/// that finish within it are committed, not redelivered. The rebalance waits as long (the poll
/// thread serves the group between polls), well within any session timeout.
pub(super) const REVOKE_DRAIN: Duration = Duration::from_millis(300);

/// One assigned partition's progress.
struct Progress {
    generation: u64,
    /// Where the assignment started reading: its committed offset, or its first record's.
    start: Option<u64>,
    /// The offset after the last record settled (its offset stored).
    settled: Option<u64>,
    /// The offset after the last record handed to the runtime.
    handed: Option<u64>,
    /// The highest offset a commit was reported through for (the next one to read).
    committed: Option<u64>,
    /// Records settled and not reported committed (before the first report: since the
    /// assignment's first acknowledgement).
    uncommitted: u64,
    /// Since when settled records have been waiting for their commit: the first store past
    /// the committed offset, or the report of a commit that left some behind (what it left was
    /// stored after that commit started, so it is no older than the report, give or take the
    /// report's interval).
    waiting_since: Option<Instant>,
}

/// When settled records waiting for their commit are at risk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RiskBound {
    /// The oldest has waited this long...
    pub(crate) age: Duration,
    /// ...or this many wait on one partition, and have waited `report_lag`: at full speed
    /// more are settled between two reports of the committed offsets than the bound, so a
    /// count alone would stop a consumer whose commits all get through.
    pub(crate) records: u64,
    /// The longest a commit that got through may take to be reported.
    pub(crate) report_lag: Duration,
}

/// A partition whose settled records have waited past a bound for their commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AtRisk {
    pub(super) partition: u32,
    /// How long its oldest uncommitted record has waited.
    pub(super) waited: Duration,
    /// How many settled records wait for their commit.
    pub(super) records: u64,
}

/// The acknowledgements from the handle, and what was stored of them per partition.
pub(super) struct Settlement {
    acks: std_mpsc::Receiver<Acks>,
    partitions: ByPartition<Progress>,
    /// Offsets are stored in librdkafka for its commits; not when a transaction commits them
    /// (`floors`).
    stores_offsets: bool,
}

impl Settlement {
    pub(super) fn new(acks: std_mpsc::Receiver<Acks>, stores_offsets: bool) -> Self {
        Self {
            acks,
            partitions: ByPartition::default(),
            stores_offsets,
        }
    }

    pub(super) fn assigned(&mut self, partition: u32, generation: u64) {
        self.partitions.insert(
            partition,
            Progress {
                generation,
                start: None,
                settled: None,
                handed: None,
                committed: None,
                uncommitted: 0,
                waiting_since: None,
            },
        );
    }

    pub(super) fn revoked(&mut self, partition: u32) {
        self.partitions.remove(partition);
    }

    /// The assignment of `partition` reads from `offset` on (unless it was told already).
    pub(super) fn started(&mut self, partition: u32, offset: u64) {
        if let Some(progress) = self.partitions.get_mut(partition) {
            progress.start.get_or_insert(offset);
        }
    }

    /// Each partition's offset to commit (the next to read): after its acknowledged prefix, or
    /// where it started when nothing is acknowledged yet.
    pub(super) fn floors(&self) -> Vec<(u32, u64)> {
        self.partitions
            .iter()
            .filter_map(|(partition, progress)| Some((partition, progress.settled.or(progress.start)?)))
            .collect()
    }

    /// `partition`'s position is `position`, and `next` is the offset after the last record
    /// fetched: when everything fetched is settled, it is settled through the position (the
    /// offsets between have no record: transaction markers, aborted records).
    /// Returns whether it moved.
    pub(super) fn passed(&mut self, partition: u32, next: u64, position: u64) -> bool {
        let Some(progress) = self.partitions.get_mut(partition) else {
            return false;
        };
        let moved = progress.settled == Some(next) && position > next;
        if moved {
            progress.settled = Some(position);
        }
        moved
    }

    /// Records up to `next` (exclusive) of `partition` went to the runtime.
    pub(super) fn handed(&mut self, partition: u32, next: Option<u64>) {
        if let Some(progress) = self.partitions.get_mut(partition) {
            progress.handed = next;
        }
    }

    /// Stores the offsets of every acknowledgement that has arrived, folded, as one list.
    /// Returns how many records they settle (counted from where the assignment started; none
    /// by the first acknowledgement when that is not known), and whether the handle is gone.
    pub(super) fn store<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        topic: &str,
    ) -> (u64, bool) {
        let mut acks = Acks::default();
        let gone = loop {
            match self.acks.try_recv() {
                Ok(Acks(received)) => {
                    for (partition, generation, offset) in received {
                        acks.add(partition, generation, offset);
                    }
                }
                Err(std_mpsc::TryRecvError::Empty) => break false,
                Err(std_mpsc::TryRecvError::Disconnected) => break true,
            }
        };
        (self.store_folded(consumer, topic, acks), gone)
    }

    fn store_folded<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        topic: &str,
        mut acks: Acks,
    ) -> u64 {
        let mut records = 0;
        let now = Instant::now();
        // Acknowledgements of an assignment that has since changed are stale.
        acks.0.retain(|&(partition, generation, offset)| {
            let Some(progress) = self.partitions.get_mut(partition) else {
                return false;
            };
            if progress.generation != generation {
                return false;
            }
            let settled = offset + 1;
            let from = progress
                .settled
                .replace(settled)
                .or(progress.start)
                .unwrap_or(settled);
            let added = settled.saturating_sub(from);
            records += added;
            match progress.committed {
                Some(committed) if settled <= committed => {}
                Some(committed) => {
                    progress.uncommitted = settled - committed;
                    progress.waiting_since.get_or_insert(now);
                }
                None => {
                    progress.uncommitted += added;
                    progress.waiting_since.get_or_insert(now);
                }
            }
            true
        });
        if acks.is_empty() || !self.stores_offsets {
            return records;
        }
        let mut list = TopicPartitionList::with_capacity(acks.0.len());
        for &(partition, _, offset) in &acks.0 {
            // The committed offset is the next one to read.
            let _ = list.add_partition_offset(topic, partition as i32, Offset::Offset(offset as i64 + 1));
        }
        if let Err(error) = consumer.store_offsets(&list) {
            tracing::warn!(topic, ?acks, %error, "storing offsets failed");
        }
        records
    }

    /// Before `revoked` go: asks the handle for the acknowledgements it holds and stores what
    /// arrives until every record handed over of them is settled, or for `REVOKE_DRAIN` at
    /// most. The caller commits.
    pub(super) fn drain_for_revoke<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        topic: &str,
        revoked: &[u32],
        ack_request: &AckRequest,
    ) {
        let deadline = Instant::now() + REVOKE_DRAIN;
        ack_request.raise();
        loop {
            let (_, gone) = self.store(consumer, topic);
            if gone || self.all_settled(revoked) {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::debug!(topic, ?revoked, "revoked with acknowledgements still to come");
                return;
            }
            match self.acks.recv_timeout(deadline - now) {
                Ok(acks) => {
                    self.store_folded(consumer, topic, acks);
                    // The handle answers each request once; ask for the next ones too.
                    ack_request.raise();
                }
                Err(_) => return,
            }
        }
    }

    /// `partition` is committed through `next` (the next offset to read), as reported at
    /// `now`; a report that does not move it changes nothing (the clock of what waits goes on).
    pub(super) fn committed(&mut self, partition: u32, next: u64, now: Instant) {
        let Some(progress) = self.partitions.get_mut(partition) else {
            return;
        };
        if progress.committed.is_some_and(|committed| committed >= next) {
            return;
        }
        let committed = next;
        progress.committed = Some(committed);
        match progress.settled {
            Some(settled) if settled > committed => {
                progress.uncommitted = settled - committed;
                progress.waiting_since = Some(now);
            }
            _ => {
                progress.uncommitted = 0;
                progress.waiting_since = None;
            }
        }
    }

    /// The first partition whose settled records waiting for their commit are past `bound`.
    pub(super) fn at_risk(&self, now: Instant, bound: RiskBound) -> Option<AtRisk> {
        self.partitions.iter().find_map(|(partition, progress)| {
            let waited = progress
                .waiting_since
                .map_or(Duration::ZERO, |since| now.saturating_duration_since(since));
            let past =
                waited >= bound.age || (progress.uncommitted >= bound.records && waited >= bound.report_lag);
            past.then_some(AtRisk {
                partition,
                waited,
                records: progress.uncommitted,
            })
        })
    }

    fn all_settled(&self, partitions: &[u32]) -> bool {
        partitions.iter().all(|&partition| {
            self.partitions
                .get(partition)
                .is_none_or(|progress| match (progress.handed, progress.settled) {
                    (None, _) => true,
                    (Some(handed), Some(settled)) => settled >= handed,
                    (Some(_), None) => false,
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc as std_mpsc;
    use std::time::{Duration, Instant};

    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::BaseConsumer;

    use super::{RiskBound, Settlement, REVOKE_DRAIN};
    use crate::backend::kafka::consumer::commits::AckRequest;
    use crate::backend::kafka::consumer::Acks;

    /// A client that never connects: storing offsets of partitions it was not assigned fails
    /// (logged), which these tests do not look at.
    fn client() -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("group.id", "settle-test")
            .create()
            .unwrap()
    }

    fn acks(list: &[(u32, u64, u64)]) -> Acks {
        let mut acks = Acks::default();
        for &(partition, generation, offset) in list {
            acks.add(partition, generation, offset);
        }
        acks
    }

    #[test]
    fn counts_what_acknowledgements_settle_and_drops_stale_ones() {
        let client = client();
        let (tx, rx) = std_mpsc::channel();
        let mut settlement = Settlement::new(rx, true);
        settlement.assigned(0, 2);
        settlement.handed(0, Some(10));
        // The first of an assignment counts nothing; one of an earlier assignment is stale.
        tx.send(acks(&[(0, 2, 4), (0, 1, 9)])).unwrap();
        assert_eq!(settlement.store(&client, "t"), (0, false));
        assert!(!settlement.all_settled(&[0]));
        tx.send(acks(&[(0, 2, 9)])).unwrap();
        assert_eq!(settlement.store(&client, "t"), (5, false));
        assert!(settlement.all_settled(&[0]));
        drop(tx);
        assert_eq!(settlement.store(&client, "t"), (0, true));
    }

    #[test]
    fn settled_records_are_at_risk_past_an_age_or_a_count_until_a_commit_is_reported() {
        let client = client();
        let (tx, rx) = std_mpsc::channel();
        let mut settlement = Settlement::new(rx, true);
        let age = Duration::from_secs(5);
        let bound = RiskBound {
            age,
            records: 100,
            report_lag: Duration::from_millis(700),
        };
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        settlement.assigned(0, 1);
        settlement.assigned(1, 1);
        assert_eq!(settlement.at_risk(at(60_000), bound), None, "nothing settled");
        // Partition 0 settles through offset 9, committed through it: nothing waits.
        tx.send(acks(&[(0, 1, 9)])).unwrap();
        settlement.store(&client, "t");
        settlement.committed(0, 10, Instant::now());
        assert_eq!(settlement.at_risk(Instant::now() + 2 * age, bound), None);
        // Then 50 more, never committed (the broker is gone): at risk once the age is reached.
        tx.send(acks(&[(0, 1, 59)])).unwrap();
        settlement.store(&client, "t");
        let stored = Instant::now();
        assert_eq!(settlement.at_risk(stored, bound), None);
        let risk = settlement.at_risk(stored + age, bound).expect("past the age");
        assert_eq!((risk.partition, risk.records), (0, 50));
        // A commit through 30 leaves 30 behind, younger than the report.
        settlement.committed(0, 30, stored + age);
        assert_eq!(settlement.at_risk(stored + age, bound), None);
        assert!(settlement.at_risk(stored + 2 * age, bound).is_some());
        // Reported again unmoved (the broker is gone): the clock goes on.
        settlement.committed(0, 30, stored + 2 * age);
        assert!(settlement.at_risk(stored + 2 * age, bound).is_some());
        // A commit through everything: nothing waits, however long after.
        settlement.committed(0, 60, stored + age);
        assert_eq!(settlement.at_risk(stored + 10 * age, bound), None);
        // Partition 1: past the count once a report could have said they were committed.
        tx.send(acks(&[(1, 1, 0)])).unwrap();
        settlement.store(&client, "t");
        tx.send(acks(&[(1, 1, 100)])).unwrap();
        settlement.store(&client, "t");
        assert_eq!(
            settlement.at_risk(Instant::now(), bound),
            None,
            "not reported yet"
        );
        let later = Instant::now() + bound.report_lag;
        let risk = settlement.at_risk(later, bound).expect("past the count");
        assert_eq!((risk.partition, risk.records), (1, 100));
        // Revoked: its records are the next owner's.
        settlement.revoked(1);
        assert_eq!(settlement.at_risk(later, bound), None);
    }

    #[test]
    fn a_revoke_waits_for_acknowledgements_until_everything_handed_over_is_settled_or_no_longer() {
        let client = client();
        let (tx, rx) = std_mpsc::channel();
        let mut settlement = Settlement::new(rx, true);
        let request = AckRequest::default();
        settlement.assigned(3, 1);
        settlement.handed(3, Some(100));

        // The last acknowledgement arrives 50 ms into the revoke: it ends the wait.
        let started = Instant::now();
        std::thread::scope(|scope| {
            let tx = tx.clone();
            scope.spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                tx.send(acks(&[(3, 1, 99)])).unwrap();
            });
            settlement.drain_for_revoke(&client, "t", &[3], &request);
        });
        let waited = started.elapsed();
        assert!(request.is_raised(), "the handle was asked for what it holds");
        assert!(
            waited >= Duration::from_millis(50) && waited < REVOKE_DRAIN,
            "{waited:?}"
        );
        assert!(settlement.all_settled(&[3]));

        // Records handed over and never acknowledged: the wait ends at the limit.
        settlement.handed(3, Some(200));
        let started = Instant::now();
        settlement.drain_for_revoke(&client, "t", &[3], &request);
        let waited = started.elapsed();
        assert!(
            waited >= REVOKE_DRAIN && waited < REVOKE_DRAIN + Duration::from_millis(200),
            "{waited:?}"
        );
    }
}
