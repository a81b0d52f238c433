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
mod tests;
