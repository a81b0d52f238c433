//! A key-ordered handler's holds (`ordering = "key"`): which keys of each partition have a
//! record out on a retry level (its *heads*) or held back on the held topic (its *followers*),
//! shared by the handler's consumers in this process.
//!
//! The rule, one owner for every level: a main-topic record whose key has a head or a
//! follower is not attempted but held back (handed to the held topic, no attempt counted); a
//! held record is attempted only when its key has no head, in the held topic's order (which is
//! the main topic's, per key); a key's hold ends when its last head concludes and its last
//! follower has been attempted. Counts, not records: memory grows with the keys held, never
//! with a key's backlog (the followers wait on the held topic).
//!
//! With `on_dead_letter = "hold_key"` a record that fails for the last time goes to the held
//! topic too, marked dead (`rk-dead-held`): it stays a head of its key (so the key stays held)
//! until an operator's resolution, read on the same topic (`rk-resolves`), lets it start:
//! replayed (attempted before the key's later records) or discarded (sent to its queue). Both
//! stay unacknowledged until then, so a restart or a new owner counts them again.
//!
//! Keys are kept as 64-bit hashes: two keys of a partition sharing one only hold each other
//! back (order is kept, a record waits longer), never the other way round.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::future::BoxFuture;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::backend::Record;
use crate::error::BackendError;
use crate::headers::{names, Headers};
use crate::held_keys::{HeldRecord, Resolution};
use crate::metrics::KeyHoldHandles;

/// Which part of the chain a level is: where its records are in a key's story.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// The main topic: records not seen before.
    Main,
    /// A retry level: a key's head.
    Retry,
    /// The held topic: a key's followers, each attempted for the first time.
    Held,
}

/// What a record's conclusion did with it, as a key's hold counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Conclusion {
    /// Done with: succeeded, or went to the dead letters, the parking queue or nowhere.
    Done,
    /// Handed to a retry level: a head of its key.
    Retried,
    /// Failed for the last time and holds its key on the held topic until resolved
    /// (`on_dead_letter = "hold_key"`): a head of its key still.
    DeadHeld,
}

/// A key's hold in one partition.
#[derive(Debug)]
struct Hold {
    /// Its records on retry levels (waiting there, or being attempted) and its dead-held
    /// records on the held topic: each keeps the key held.
    heads: u32,
    /// Of `heads`, the dead-held records not resolved yet.
    dead: u32,
    /// Its records on the held topic, not concluded yet.
    followers: u32,
    /// The main-topic offset of the record that started the hold, for `rk-held-behind`.
    behind: u64,
    /// When the hold started (or was counted, at start), for how long it lasted.
    since: Instant,
}

impl Default for Hold {
    fn default() -> Self {
        Hold {
            heads: 0,
            dead: 0,
            followers: 0,
            behind: 0,
            since: Instant::now(),
        }
    }
}

/// Every hold of the handler, and the followers over all of them (for the gauge).
#[derive(Default)]
struct Holds {
    keys: HashMap<(u32, u64), Hold>,
    followers: u64,
    /// Dead-held records over all keys (for the gauge).
    dead: u64,
    /// Resolutions read (or counted) on the held topic, by (partition, offset of the dead-held
    /// record they resolve), until that record starts.
    resolutions: HashMap<(u32, u64), Resolution>,
    /// Of those, the ones taken (their record started), until the partition is forgotten: a
    /// resolution is read again (fetched in its turn after a look applied it, or by the next
    /// look while the partition stays full) and must not resolve its record twice. One per
    /// operator's resolution.
    taken: HashSet<(u32, u64)>,
    /// Partitions whose holds have been counted since the main consumer was assigned them:
    /// only their retries and held records may start.
    counted: HashSet<u32>,
}

/// Where the holds of newly assigned partitions are counted from: for each retry level and
/// the held topic, the records of those partitions not acknowledged yet; with `Some(stage)`,
/// only the topics of that stage are read.
pub(crate) type Unsettled = Arc<
    dyn Fn(Vec<u32>, Option<Stage>) -> BoxFuture<'static, Result<Vec<(Stage, Vec<Record>)>, BackendError>>
        + Send
        + Sync,
>;

/// The holds of one key-ordered handler, shared by its levels.
pub(crate) struct KeyHolds {
    holds: Mutex<Holds>,
    unsettled: Unsettled,
    /// Bumped when a key's last head concludes: the held level looks at its waiting records again.
    released: watch::Sender<u64>,
    hasher: std::hash::RandomState,
    handles: KeyHoldHandles,
}

#[cfg(test)]
impl Default for KeyHolds {
    /// Holds with no records to count and no metrics.
    fn default() -> Self {
        Self::new(
            KeyHoldHandles::default(),
            Arc::new(|_, _| Box::pin(async { Ok(Vec::new()) })),
        )
    }
}

impl KeyHolds {
    /// No holds yet; `handles` are its metrics, `unsettled` where assigned partitions' holds
    /// are counted from.
    pub(crate) fn new(handles: KeyHoldHandles, unsettled: Unsettled) -> Self {
        handles.keys.set(0.0);
        handles.records.set(0.0);
        handles.dead.set(0.0);
        Self {
            holds: Mutex::new(Holds::default()),
            unsettled,
            released: watch::Sender::new(0),
            hasher: std::hash::RandomState::new(),
            handles,
        }
    }

    /// The key of `record` as the holds know it; `None` for a record without a key, which is
    /// never held back.
    pub(crate) fn key_of(&self, record: &Record) -> Option<u64> {
        let key = record.key.as_deref()?;
        Some(self.hasher.hash_one(key))
    }

    fn holds(&self) -> std::sync::MutexGuard<'_, Holds> {
        // Every change below is one step on plain counters: a panic elsewhere leaves them whole.
        self.holds.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The gauges, as `holds` says (called with the lock held, after a change).
    fn publish(&self, holds: &Holds) {
        self.handles.keys.set(holds.keys.len() as f64);
        self.handles.records.set(holds.followers as f64);
        self.handles.dead.set(holds.dead as f64);
    }

    /// A main-topic record of `key`: if the key is held, it becomes one more follower and the
    /// main-topic offset it waits behind is returned; otherwise it may be attempted.
    pub(crate) fn hold_back(&self, partition: u32, key: u64) -> Option<u64> {
        let mut holds = self.holds();
        let hold = holds.keys.get_mut(&(partition, key))?;
        hold.followers += 1;
        let behind = hold.behind;
        holds.followers += 1;
        self.publish(&holds);
        Some(behind)
    }

    /// Whether a held record of `key` may be attempted: the key has no record on a retry level.
    pub(crate) fn is_free(&self, partition: u32, key: u64) -> bool {
        self.holds()
            .keys
            .get(&(partition, key))
            .is_none_or(|hold| hold.heads == 0)
    }

    /// A record of `key` concluded on `stage` as `conclusion` says; `origin` is its main-topic
    /// offset. (A dead-held record replayed on the held level concludes as a head: `Retry`.)
    pub(crate) fn concluded(
        &self,
        partition: u32,
        key: u64,
        stage: Stage,
        conclusion: Conclusion,
        origin: u64,
    ) {
        let retried = conclusion != Conclusion::Done;
        let mut guard = self.holds();
        let holds = &mut *guard;
        let hold = match holds.keys.entry((partition, key)) {
            Entry::Occupied(hold) => hold.into_mut(),
            // A key not held that stays so: nothing to count (a main-topic success, mostly).
            Entry::Vacant(_) if !retried => return,
            Entry::Vacant(free) => free.insert(Hold::default()),
        };
        let heads_before = hold.heads;
        match stage {
            Stage::Main => {}
            Stage::Retry => hold.heads = hold.heads.saturating_sub(1),
            Stage::Held if hold.followers > 0 => {
                hold.followers -= 1;
                holds.followers -= 1;
            }
            Stage::Held => {}
        }
        if retried {
            if hold.heads == 0 {
                hold.behind = origin;
            }
            hold.heads += 1;
        }
        if conclusion == Conclusion::DeadHeld {
            hold.dead += 1;
            holds.dead += 1;
        }
        let (heads, followers) = (hold.heads, hold.followers);
        if heads == 0 && followers == 0 {
            if let Some(ended) = holds.keys.remove(&(partition, key)) {
                self.handles.hold.record(ended.since.elapsed().as_secs_f64());
            }
        }
        self.publish(holds);
        drop(guard);
        // A key held for good now wakes the held level too: a partition of it that is full
        // must look past what it keeps (see `KeyOrder::resolution_look`).
        if (heads_before > 0 && heads == 0) || conclusion == Conclusion::DeadHeld {
            self.released.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// An operator's resolution of the dead-held record at `of` in `partition`, read on the
    /// held topic: that record may start (the first resolution read is the one that counts).
    pub(crate) fn resolve(&self, partition: u32, of: u64, how: Resolution) {
        {
            let mut holds = self.holds();
            if !holds.taken.contains(&(partition, of)) {
                holds.resolutions.entry((partition, of)).or_insert(how);
            }
        }
        self.released.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The resolution of the dead-held record at `offset` in `partition`, if one was read.
    pub(crate) fn resolution(&self, partition: u32, offset: u64) -> Option<Resolution> {
        self.holds().resolutions.get(&(partition, offset)).copied()
    }

    /// The dead-held record at `offset` of `key` starts as resolved: it is no longer dead (it
    /// stays a head until it concludes). Returns the resolution.
    pub(crate) fn take_resolution(
        &self,
        partition: u32,
        key: Option<u64>,
        offset: u64,
    ) -> Option<Resolution> {
        let mut guard = self.holds();
        let holds = &mut *guard;
        let how = holds.resolutions.remove(&(partition, offset))?;
        holds.taken.insert((partition, offset));
        if let Some(hold) = key.and_then(|key| holds.keys.get_mut(&(partition, key))) {
            if hold.dead > 0 {
                hold.dead -= 1;
                holds.dead -= 1;
            }
        }
        self.publish(holds);
        Some(how)
    }

    /// Reads the resolutions written on the held topic for `partitions` (with the records not
    /// acknowledged there, as a count does) and applies them: for a held level that cannot
    /// fetch them, its partition full of records waiting behind dead-held keys. Returns the
    /// dead-held records read that are resolved now (the level puts in those it has not
    /// fetched: its full partition would never reach them).
    pub(crate) async fn read_resolutions(&self, partitions: Vec<u32>) -> Result<Vec<Record>, BackendError> {
        // The held topic alone: the retry levels hold no resolutions.
        let out = (self.unsettled)(partitions, Some(Stage::Held)).await?;
        let mut dead = Vec::new();
        for record in out.into_iter().flat_map(|(_, records)| records) {
            match HeldRecord::of(&record.headers) {
                HeldRecord::Resolution { of, how } => self.resolve(record.partition, of, how),
                HeldRecord::Dead { .. } => dead.push(record),
                HeldRecord::Follower => {}
            }
        }
        // Resolutions come after the records they resolve: all applied, then looked up.
        dead.retain(|r| self.resolution(r.partition, r.offset).is_some());
        Ok(dead)
    }

    /// Whether `key` of `partition` is held by a dead-held record.
    pub(crate) fn has_dead(&self, partition: u32, key: u64) -> bool {
        self.holds()
            .keys
            .get(&(partition, key))
            .is_some_and(|hold| hold.dead > 0)
    }

    /// Whether the holds of `partition` have been counted since it was assigned.
    pub(crate) fn is_counted(&self, partition: u32) -> bool {
        self.holds().counted.contains(&partition)
    }

    /// The main consumer was assigned `partitions`: their holds are counted from the records
    /// still out, unacknowledged on a retry level (`Stage::Retry`, heads) or on the held topic
    /// (`Stage::Held`, followers). What was concluded but not acknowledged is counted too; it
    /// is consumed again and concludes again. Until then no retry or held record of theirs
    /// starts.
    pub(crate) async fn count(&self, partitions: Vec<u32>) -> Result<(), BackendError> {
        let out = (self.unsettled)(partitions.clone(), None).await?;
        {
            let mut holds = self.holds();
            for (stage, records) in &out {
                self.restore(&mut holds, *stage, records);
            }
            holds.counted.extend(partitions);
            self.publish(&holds);
        }
        // The retry levels and the held topic look at what waits for these partitions.
        self.released.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    /// The main consumer lost `partitions`: their holds go with them (their new owner counts
    /// them again), and their retries and held records wait for the next count.
    pub(crate) fn forget(&self, partitions: &[u32]) {
        let mut guard = self.holds();
        let holds = &mut *guard;
        let (mut dropped, mut dead) = (0, 0);
        holds.keys.retain(|(partition, _), hold| {
            let keep = !partitions.contains(partition);
            if !keep {
                dropped += u64::from(hold.followers);
                dead += u64::from(hold.dead);
            }
            keep
        });
        holds.followers -= dropped;
        holds.dead -= dead;
        holds
            .resolutions
            .retain(|(partition, _), _| !partitions.contains(partition));
        holds
            .taken
            .retain(|(partition, _)| !partitions.contains(partition));
        for partition in partitions {
            holds.counted.remove(partition);
        }
        self.publish(holds);
    }

    fn restore<'r>(&self, holds: &mut Holds, stage: Stage, records: impl IntoIterator<Item = &'r Record>) {
        for record in records {
            let kind = match stage {
                Stage::Held => HeldRecord::of(&record.headers),
                _ => HeldRecord::Follower,
            };
            if let HeldRecord::Resolution { of, how } = kind {
                holds.resolutions.entry((record.partition, of)).or_insert(how);
                continue;
            }
            let Some(key) = self.key_of(record) else {
                continue;
            };
            let hold = holds.keys.entry((record.partition, key)).or_default();
            match (stage, kind) {
                (Stage::Retry, _) | (Stage::Held, HeldRecord::Dead { .. }) => {
                    if hold.heads == 0 {
                        hold.behind = origin_offset(&record.headers).unwrap_or(record.offset);
                    }
                    hold.heads += 1;
                    if stage == Stage::Held {
                        hold.dead += 1;
                        holds.dead += 1;
                    }
                }
                (Stage::Held, _) => {
                    hold.followers += 1;
                    holds.followers += 1;
                }
                (Stage::Main, _) => {}
            }
        }
    }

    /// Woken when a key's last head concludes (see [`watch::Receiver::changed`]).
    pub(crate) fn releases(&self) -> watch::Receiver<u64> {
        self.released.subscribe()
    }

    /// Keys held and followers waiting, over all partitions.
    #[cfg(test)]
    pub(crate) fn counts(&self) -> (usize, u64) {
        let holds = self.holds();
        (holds.keys.len(), holds.followers)
    }

    /// Dead-held records not resolved yet, over all partitions.
    #[cfg(test)]
    pub(crate) fn dead(&self) -> u64 {
        self.holds().dead
    }
}

/// The main-topic offset a record of a level carries (`rk-original-offset`).
pub(super) fn origin_offset(headers: &Headers) -> Option<u64> {
    headers.get_str(names::ORIGINAL_OFFSET)?.parse().ok()
}
