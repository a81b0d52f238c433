//! The partitions one level's consumer is assigned, as it sees them: the records fetched and not
//! started yet (in offset order, each with its due time), whether the partition is held, and
//! the offsets started and finished, so only a contiguous prefix of finished work is
//! acknowledged when attempts finish out of order.

use std::collections::VecDeque;

use tokio::time::Instant;

use crate::backend::Record;
use crate::clock::instant_at;

/// Records kept in memory per partition while they wait (not due yet, or behind a failed
/// hand-off); past this the partition is held, so memory stays bounded.
pub(super) const WAITING_LIMIT: usize = 128;
/// A held partition is fetched again once this few records are left waiting, so the next
/// ones arrive before the kept ones run out.
pub(super) const RESUME_BELOW: usize = WAITING_LIMIT / 4;

/// Offsets in flight and finished ones not yet acknowledged, for one partition.
///
/// Offsets are mostly started and finished in increasing order, so both are sorted queues whose
/// capacity is reused: the common case allocates nothing per message and searches nothing. A
/// failed record's offset stays in flight until its hand-off is durable, and every offset
/// finished behind it meanwhile waits in `finished` (a tree there was the failure workload's
/// largest runtime symbol in `perf`).
#[derive(Default)]
pub(super) struct Progress {
    in_flight: VecDeque<u64>,
    finished: VecDeque<u64>,
}

/// Puts `offset` in its place in a sorted queue, mostly at the back; once.
fn insert_sorted(queue: &mut VecDeque<u64>, offset: u64) {
    match queue.back() {
        Some(&last) if last >= offset => {
            if let Err(at) = queue.binary_search(&offset) {
                queue.insert(at, offset);
            }
        }
        _ => queue.push_back(offset),
    }
}

impl Progress {
    pub(super) fn start(&mut self, offset: u64) {
        // Partitions arrive in offset order, except where a backend hands this member entries
        // another member left behind (Redis, unordered): keep the queue sorted either way.
        insert_sorted(&mut self.in_flight, offset);
    }

    /// Marks `offset` finished; returns the offset up to which everything is now done, if that
    /// moved: the highest finished offset below every offset still in flight.
    pub(super) fn finish(&mut self, offset: u64) -> Option<u64> {
        // Mostly the oldest one finishes (always, one at a time): that one without a search.
        if self.in_flight.front() == Some(&offset) {
            self.in_flight.pop_front();
        } else if let Ok(index) = self.in_flight.binary_search(&offset) {
            self.in_flight.remove(index);
        }
        let below = self.in_flight.front().copied().unwrap_or(u64::MAX);
        if self.finished.is_empty() && offset < below {
            return Some(offset);
        }
        insert_sorted(&mut self.finished, offset);
        if self.finished.front().is_some_and(|&oldest| oldest > below) {
            // Behind an offset still in flight (a hand-off not yet durable).
            return None;
        }
        let done = self.finished.partition_point(|&o| o < below);
        let upto = self.finished[done.checked_sub(1)?];
        self.finished.drain(..done);
        Some(upto)
    }
}

/// A fetched record not started yet.
struct Waiting {
    /// Epoch ms before which it must not start; 0 when it waits only for the records ahead of
    /// it (or for its partition's failed hand-off).
    due: i64,
    record: Record,
}

/// One partition.
struct Partition {
    /// Bumped when the partition is revoked: attempts and hand-offs from before are stale.
    generation: u32,
    progress: Progress,
    /// The head is started from here when due, without fetching it again.
    waiting: VecDeque<Waiting>,
    /// Whether the consumer holds the partition (rewound to after the last waiting record).
    held: bool,
    /// Where the consumer was held: the first offset it fetches again.
    held_from: u64,
    /// Records put in from beyond `held_from` without being fetched ([`Partitions::inject`]):
    /// not in the acknowledged prefix's reckoning until fetched, so acknowledging them never
    /// commits past what was not fetched yet.
    injected: Vec<u64>,
    /// Of those, the ones concluded: acknowledged in their turn when the consumer fetches them.
    injected_done: Vec<u64>,
}

impl Partition {
    fn new(generation: u32) -> Self {
        Self {
            generation,
            progress: Progress::default(),
            waiting: VecDeque::new(),
            held: false,
            held_from: 0,
            injected: Vec::new(),
            injected_done: Vec::new(),
        }
    }
}

/// A waiting record taken to be started.
pub(super) struct Next {
    pub(super) record: Record,
    /// Its partition's generation now.
    pub(super) generation: u32,
    /// Its `rk-due-at`, as read when it was fetched.
    pub(super) due: Option<i64>,
    /// Whether the partition was held and is to be resumed: few enough are left waiting.
    pub(super) resume: bool,
}

/// The partitions of one level, indexed by number (partitions are small, dense numbers).
#[derive(Default)]
pub(super) struct Partitions {
    list: Vec<Partition>,
    /// Records waiting over all partitions: when 0, there is nothing to look for in `list`.
    waiting: usize,
    /// Whether any partition has injected records: a fetched record is looked up only then.
    injected: bool,
}

impl Partitions {
    fn get(&mut self, partition: u32) -> &mut Partition {
        let index = partition as usize;
        if index >= self.list.len() {
            self.list.resize_with(index + 1, || Partition::new(0));
        }
        &mut self.list[index]
    }

    /// How many partition numbers have been seen (for looking at each in turn).
    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    /// Records waiting over all partitions.
    pub(super) fn waiting(&self) -> usize {
        self.waiting
    }

    /// The partition's incarnation now.
    pub(super) fn generation(&mut self, partition: u32) -> u32 {
        self.get(partition).generation
    }

    /// Whether work of `generation` still belongs to this incarnation of `partition`.
    pub(super) fn is_current(&self, partition: u32, generation: u32) -> bool {
        self.list
            .get(partition as usize)
            .is_some_and(|p| p.generation == generation)
    }

    /// The partitions held (full: nothing more is fetched) while one of their waiting records
    /// is as `stuck` says, for a look past what they can fetch.
    pub(super) fn held_with(&self, mut stuck: impl FnMut(&Record) -> bool) -> Vec<u32> {
        if self.waiting == 0 {
            return Vec::new();
        }
        (0..)
            .zip(&self.list)
            .filter(|(_, p)| p.held && p.waiting.iter().any(|w| stuck(&w.record)))
            .map(|(partition, _)| partition)
            .collect()
    }

    /// Whether nothing of `partition` waits: a record fetched now may start at once.
    pub(super) fn none_waiting(&mut self, partition: u32) -> bool {
        self.get(partition).waiting.is_empty()
    }

    /// Keeps a fetched record until it is due (`due`: its `rk-due-at`) and the records ahead of
    /// it have started. Returns the offset to hold the partition at when it just got full:
    /// kept records are not fetched again, the consumer resumes after them.
    pub(super) fn keep(&mut self, record: Record, due: Option<i64>) -> Option<u64> {
        let offset = record.offset;
        let state = self.get(record.partition);
        state.waiting.push_back(Waiting {
            due: due.unwrap_or(0),
            record,
        });
        let hold = state.waiting.len() >= WAITING_LIMIT && !state.held;
        state.held |= hold;
        if hold {
            state.held_from = offset + 1;
        }
        self.waiting += 1;
        hold.then_some(offset + 1)
    }

    /// Puts a started record back among the waiting ones, in offset order (its offset stays
    /// in flight): started again when its turn comes, as if it had not been. Not counted
    /// against [`WAITING_LIMIT`]: what can come back is bounded by the attempts under way.
    pub(super) fn put_back(&mut self, record: Record, due: Option<i64>) {
        let state = self.get(record.partition);
        let at = state.waiting.partition_point(|w| w.record.offset < record.offset);
        state.waiting.insert(
            at,
            Waiting {
                due: due.unwrap_or(0),
                record,
            },
        );
        self.waiting += 1;
    }

    /// Puts in a record of a held partition read from beyond where it was held (the held
    /// level's look past a full partition: a resolved dead-held record its key's waiting
    /// records wait for, which the partition would never fetch). Ignored unless the partition is
    /// held and the record is beyond what it fetched. It waits, due now, after the kept ones; its
    /// offset counts for the acknowledged prefix only once the consumer fetches it
    /// ([`fetched_again`](Self::fetched_again)).
    pub(super) fn inject(&mut self, record: Record) -> bool {
        let state = self.get(record.partition);
        let offset = record.offset;
        // Once put in is enough: a look reads a resolved record again while it is not
        // acknowledged, concluded or not.
        if !state.held
            || offset < state.held_from
            || state.injected.contains(&offset)
            || state.injected_done.contains(&offset)
        {
            return false;
        }
        state.injected.push(offset);
        let at = state.waiting.partition_point(|w| w.record.offset < offset);
        state.waiting.insert(at, Waiting { due: 0, record });
        self.waiting += 1;
        self.injected = true;
        true
    }

    /// A fetched record that was injected before: `Some(upto)` to acknowledge (it concluded:
    /// now in its turn), `Some(None)` when it is still under way (the fetched copy is dropped),
    /// `None` when it was not injected.
    pub(super) fn fetched_again(&mut self, partition: u32, offset: u64) -> Option<Option<u64>> {
        if !self.injected {
            return None;
        }
        let state = self.get(partition);
        if let Some(at) = state.injected_done.iter().position(|&o| o == offset) {
            state.injected_done.swap_remove(at);
            state.progress.start(offset);
            return Some(state.progress.finish(offset));
        }
        state.injected.contains(&offset).then_some(None)
    }

    /// Whether the first record waiting on the partition at `index` is due at `now` (epoch ms).
    pub(super) fn head_due(&self, index: usize, now: i64) -> bool {
        self.list[index]
            .waiting
            .front()
            .is_some_and(|head| head.due <= now)
    }

    /// The first record waiting on the partition at `index`.
    pub(super) fn head(&self, index: usize) -> Option<&Record> {
        self.list.get(index)?.waiting.front().map(|head| &head.record)
    }

    /// Where the first record waiting on the partition at `index` that is due at `now` and
    /// passes `may_start` is. Records are due in order, so the look stops at the first one
    /// that is not due.
    pub(super) fn first_due(
        &self,
        index: usize,
        now: i64,
        mut may_start: impl FnMut(&Record) -> bool,
    ) -> Option<usize> {
        self.list
            .get(index)?
            .waiting
            .iter()
            .take_while(|w| w.due <= now)
            .position(|w| may_start(&w.record))
    }

    /// The record waiting at `at` on the partition at `index` (see [`first_due`]).
    ///
    /// [`first_due`]: Partitions::first_due
    pub(super) fn waiting_at(&self, index: usize, at: usize) -> Option<&Record> {
        self.list.get(index)?.waiting.get(at).map(|w| &w.record)
    }

    /// Takes the record waiting at `at` on the partition at `index` (see [`first_due`]): the
    /// head, or one passed over records of keys that may not start.
    ///
    /// [`first_due`]: Partitions::first_due
    pub(super) fn take_at(&mut self, index: usize, at: usize) -> Option<Next> {
        let state = &mut self.list[index];
        // Records passed over hold the acknowledged prefix back as if started: acknowledging
        // the one taken must not commit past them (they would never be read again).
        for passed in state.waiting.iter().take(at) {
            state.progress.start(passed.record.offset);
        }
        let taken = match at {
            0 => state.waiting.pop_front(),
            _ => state.waiting.remove(at),
        };
        let Waiting { due, record } = taken?;
        let resume = state.held && state.waiting.len() < RESUME_BELOW;
        state.held &= !resume;
        self.waiting -= 1;
        Some(Next {
            record,
            generation: state.generation,
            due: (due > 0).then_some(due),
            resume,
        })
    }

    /// Takes the first record waiting on the partition at `index` (see [`head_due`]).
    ///
    /// [`head_due`]: Partitions::head_due
    #[cfg(test)]
    pub(super) fn take_head(&mut self, index: usize) -> Option<Next> {
        self.take_at(index, 0)
    }

    /// The earliest due time of a head that could start (`startable` says which partitions
    /// may start anything), not before `not_before` (the next rate token).
    pub(super) fn next_due(
        &self,
        startable: impl Fn(usize) -> bool,
        not_before: Option<Instant>,
    ) -> Option<Instant> {
        let not_before = not_before.unwrap_or_else(Instant::now);
        self.list
            .iter()
            .enumerate()
            .filter(|(index, _)| startable(*index))
            .filter_map(|(_, p)| p.waiting.front())
            .map(|head| instant_at(head.due).max(not_before))
            .min()
    }

    /// Notes `offset` started: it holds the acknowledged prefix back until it finishes.
    pub(super) fn started(&mut self, partition: u32, offset: u64) {
        let state = self.get(partition);
        if !state.injected.contains(&offset) {
            state.progress.start(offset);
        }
    }

    /// Notes `offset` finished; returns the offset to acknowledge up to, if that moved.
    pub(super) fn finish(&mut self, partition: u32, offset: u64) -> Option<u64> {
        let state = self.get(partition);
        if let Some(at) = state.injected.iter().position(|&o| o == offset) {
            // Acknowledged when fetched: the records before it may not have been.
            state.injected.swap_remove(at);
            state.injected_done.push(offset);
            return None;
        }
        state.progress.finish(offset)
    }

    /// Forgets the partition: what waited is dropped (its new owner fetches it again), and
    /// whatever was started before is stale.
    pub(super) fn revoke(&mut self, partition: u32) {
        let state = self.get(partition);
        let generation = state.generation.wrapping_add(1);
        let stale = std::mem::replace(state, Partition::new(generation));
        self.waiting -= stale.waiting.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(partition: u32, offset: u64) -> Record {
        Record {
            partition,
            offset,
            timestamp_ms: None,
            key: None,
            payload: Some(offset.to_string().into()),
            headers: Default::default(),
        }
    }

    #[test]
    fn acknowledges_only_contiguous_prefix() {
        let mut progress = Progress::default();
        [10, 11, 12].into_iter().for_each(|o| progress.start(o));
        assert_eq!(progress.finish(11), None);
        assert_eq!(progress.finish(12), None);
        assert_eq!(progress.finish(10), Some(12));
        progress.start(13);
        progress.start(14);
        assert_eq!(progress.finish(14), None);
        assert_eq!(progress.finish(13), Some(14));
        progress.start(15);
        assert_eq!(progress.finish(15), Some(15));
    }

    #[test]
    fn offsets_finished_behind_hand_offs_are_acknowledged_as_each_hand_off_lands() {
        // One record at a time: 100 and 300 fail (their hand-offs stay in flight), the rest
        // succeed behind them.
        let mut progress = Progress::default();
        for offset in 100..=500 {
            progress.start(offset);
            if offset != 100 && offset != 300 {
                let acknowledged = progress.finish(offset);
                assert_eq!(acknowledged, None, "{offset} finished behind the hand-off of 100");
            }
        }
        assert_eq!(progress.finish(300), None, "100 is still in flight");
        assert_eq!(progress.finish(100), Some(500));
        assert!(progress.finished.is_empty() && progress.in_flight.is_empty());

        // Two hand-offs land in the other order: the first one's prefix goes first.
        [501, 502, 503, 504].into_iter().for_each(|o| progress.start(o));
        assert_eq!(progress.finish(502), None);
        assert_eq!(progress.finish(504), None);
        assert_eq!(progress.finish(501), Some(502));
        assert_eq!(progress.finish(503), Some(504));
    }

    #[test]
    fn an_older_offset_dispatched_late_holds_the_prefix_back() {
        let mut progress = Progress::default();
        [10, 12].into_iter().for_each(|o| progress.start(o));
        progress.start(3); // handed over late, e.g. claimed from a member that left
        progress.start(7);
        assert_eq!(progress.finish(7), None, "3 is still in flight");
        assert_eq!(progress.finish(10), None);
        assert_eq!(progress.finish(3), Some(10));
        assert_eq!(progress.finish(12), Some(12));
    }

    #[test]
    fn waiting_records_start_in_offset_order_when_due() {
        let mut partitions = Partitions::default();
        assert_eq!(partitions.keep(record(1, 5), Some(2_000)), None);
        assert_eq!(partitions.keep(record(1, 6), Some(1_000)), None);
        assert_eq!(partitions.waiting(), 2);
        // The head decides: 6 is due before 5 but waits behind it (one level, one delay).
        assert!(!partitions.head_due(1, 1_500));
        assert!(partitions.head_due(1, 2_000));
        let next = partitions.take_head(1).unwrap();
        assert_eq!(
            (next.record.offset, next.due, next.resume),
            (5, Some(2_000), false)
        );
        let next = partitions.take_head(1).unwrap();
        assert_eq!(next.record.offset, 6);
        assert!(partitions.take_head(1).is_none());
        assert_eq!(partitions.waiting(), 0);
        assert!(!partitions.head_due(0, i64::MAX), "partition 0 was never fetched");
    }

    #[test]
    fn a_record_put_in_past_a_full_partition_is_acknowledged_only_when_fetched_in_its_turn() {
        let mut partitions = Partitions::default();
        let mut held_at = None;
        for offset in 0..WAITING_LIMIT as u64 {
            held_at = partitions.keep(record(0, offset), None).or(held_at);
        }
        assert_eq!(
            held_at,
            Some(WAITING_LIMIT as u64),
            "full: held after the last kept"
        );
        assert!(!partitions.inject(record(0, 5)), "not past where it was held");
        assert!(!partitions.inject(record(1, 500)), "not a held partition");
        assert!(partitions.inject(record(0, 500)));
        assert!(!partitions.inject(record(0, 500)), "once");
        // The record put in runs first and concludes: nothing is acknowledged past 128..499,
        // which were not fetched.
        let at = partitions.first_due(0, 0, |r| r.offset == 500).unwrap();
        let next = partitions.take_at(0, at).unwrap();
        partitions.started(0, next.record.offset);
        assert_eq!(partitions.finish(0, 500), None);
        assert!(
            !partitions.inject(record(0, 500)),
            "concluded, read again by the next look: not put in twice"
        );
        // Fetched again while under way, a record put in is dropped; the kept ones run.
        for offset in 0..WAITING_LIMIT as u64 {
            let next = partitions.take_head(0).unwrap();
            assert_eq!(next.record.offset, offset);
            partitions.started(0, offset);
        }
        let mut upto = None;
        for offset in 0..WAITING_LIMIT as u64 {
            upto = partitions.finish(0, offset).or(upto);
        }
        assert_eq!(upto, Some(WAITING_LIMIT as u64 - 1), "up to the last fetched one");
        // The rest is fetched again; the record put in is acknowledged in its turn.
        assert_eq!(
            partitions.fetched_again(0, 200),
            None,
            "not put in: runs as fetched"
        );
        for offset in WAITING_LIMIT as u64..500 {
            partitions.started(0, offset);
            partitions.finish(0, offset);
        }
        assert_eq!(partitions.fetched_again(0, 500), Some(Some(500)));
        assert_eq!(partitions.fetched_again(0, 500), None, "once");
    }

    #[test]
    fn records_passed_over_hold_the_acknowledged_prefix_back() {
        let mut partitions = Partitions::default();
        for offset in [4, 5, 6] {
            partitions.keep(record(0, offset), None);
        }
        // 4 and 5 wait (their key is busy); 6 goes first.
        let next = partitions.take_at(0, 2).unwrap();
        assert_eq!(next.record.offset, 6);
        partitions.started(0, 6);
        assert_eq!(partitions.finish(0, 6), None, "4 and 5 are not done");
        let four = partitions.take_at(0, 0).unwrap();
        partitions.started(0, four.record.offset);
        assert_eq!(partitions.finish(0, 4), Some(4));
        let five = partitions.take_at(0, 0).unwrap();
        partitions.started(0, five.record.offset);
        assert_eq!(partitions.finish(0, 5), Some(6));
    }

    #[test]
    fn a_record_with_nothing_to_wait_for_is_due_at_once() {
        let mut partitions = Partitions::default();
        partitions.keep(record(0, 1), None);
        assert!(partitions.head_due(0, 0));
        assert_eq!(partitions.take_head(0).unwrap().due, None);
    }

    #[test]
    fn a_full_partition_is_held_after_its_last_kept_record_and_resumed_when_few_are_left() {
        let mut partitions = Partitions::default();
        for offset in 0..WAITING_LIMIT as u64 - 1 {
            assert_eq!(partitions.keep(record(2, offset), Some(1)), None);
        }
        let last = WAITING_LIMIT as u64 - 1;
        assert_eq!(
            partitions.keep(record(2, last), Some(1)),
            Some(last + 1),
            "hold after it"
        );
        // Held once: more records (a backend that delivers what it had fetched) do not hold again.
        assert_eq!(partitions.keep(record(2, last + 1), Some(1)), None);
        let mut resumed = Vec::new();
        while let Some(next) = partitions.take_head(2) {
            if next.resume {
                resumed.push(next.record.offset);
            }
        }
        // Resumed once, when fewer than RESUME_BELOW were left behind the one taken: 129 kept,
        // offsets 0..=128; after taking 97, 31 are left.
        assert_eq!(resumed, [(WAITING_LIMIT - RESUME_BELOW + 1) as u64]);
    }

    #[test]
    fn a_revoked_partition_drops_what_waited_and_makes_started_work_stale() {
        let mut partitions = Partitions::default();
        partitions.keep(record(3, 7), Some(5));
        partitions.keep(record(4, 1), Some(5));
        let before = partitions.generation(3);
        assert!(partitions.is_current(3, before));
        partitions.revoke(3);
        assert!(!partitions.is_current(3, before));
        assert_eq!(partitions.waiting(), 1, "partition 4 keeps its record");
        assert!(partitions.take_head(3).is_none());
        assert!(!partitions.is_current(9, 0), "never seen");
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_wake_is_the_earliest_startable_head_not_before_the_next_token() {
        let mut partitions = Partitions::default();
        let now = crate::clock::now_ms();
        partitions.keep(record(0, 1), Some(now + 3_000));
        partitions.keep(record(1, 1), Some(now + 1_000));
        let at = |ms: i64| instant_at(now + ms);
        assert_eq!(partitions.next_due(|_| true, None), Some(at(1_000)));
        assert_eq!(
            partitions.next_due(|p| p != 1, None),
            Some(at(3_000)),
            "1 is blocked"
        );
        let token = Instant::now() + std::time::Duration::from_secs(2);
        assert_eq!(partitions.next_due(|_| true, Some(token)), Some(token));
        assert_eq!(partitions.next_due(|_| false, None), None);
    }
}
