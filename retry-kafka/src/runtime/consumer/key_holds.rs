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

use crate::backend::{Record, TopicRole};
use crate::error::BackendError;
use crate::headers::{names, Headers};
use crate::held_keys::{HeldRecord, Resolution};
use crate::metrics::KeyHoldHandles;

/// How often a held level looks for resolutions it cannot fetch (see
/// [`KeyOrder::resolution_look`]).
const RESOLUTION_LOOK: std::time::Duration = std::time::Duration::from_secs(2);

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
    /// Partitions whose holds have been counted since the main consumer was assigned them:
    /// only their retries and held records may start.
    counted: HashSet<u32>,
}

/// Where the holds of newly assigned partitions are counted from: for each retry level and
/// the held topic, the records of those partitions not acknowledged yet.
pub(crate) type Unsettled = Arc<
    dyn Fn(Vec<u32>) -> BoxFuture<'static, Result<Vec<(Stage, Vec<Record>)>, BackendError>> + Send + Sync,
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
            Arc::new(|_| Box::pin(async { Ok(Vec::new()) })),
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
        self.holds().resolutions.entry((partition, of)).or_insert(how);
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
        let out = (self.unsettled)(partitions).await?;
        let held = || {
            out.iter()
                .filter(|(stage, _)| *stage == Stage::Held)
                .flat_map(|(_, r)| r)
        };
        for record in held() {
            if let HeldRecord::Resolution { of, how } = HeldRecord::of(&record.headers) {
                self.resolve(record.partition, of, how);
            }
        }
        Ok(held()
            .filter(|r| matches!(HeldRecord::of(&r.headers), HeldRecord::Dead { .. }))
            .filter(|r| self.resolution(r.partition, r.offset).is_some())
            .cloned()
            .collect())
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
        let out = (self.unsettled)(partitions.clone()).await?;
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

/// What starting a record means on a level of a key-ordered handler ([`KeyOrder::begin`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Begin {
    /// An attempt (after a rate token).
    Attempt,
    /// On the main topic: held back behind its key's head, the main-topic offset given; it is
    /// counted as a follower already.
    HoldBack(u64),
    /// A dead-held record an operator replays: attempted again (after a rate token) with a
    /// replay's headers ([`KeyOrder::replaying`]), a head of its key until it concludes.
    Replay,
    /// A dead-held record an operator discards: sent to `queue` unattempted
    /// ([`KeyOrder::discarding`]); its key goes on.
    Discard(TopicRole),
    /// An operator's resolution of the dead-held record at `of`: applied, then acknowledged.
    Resolve {
        /// The dead-held record's offset.
        of: u64,
        /// Replay or discard.
        how: Resolution,
    },
}

impl Begin {
    /// Whether it is an attempt, which takes a rate token.
    pub(super) fn attempts(self) -> bool {
        matches!(self, Begin::Attempt | Begin::Replay)
    }
}

/// A conclusion as the holds count it ([`KeyOrder::concluding`]).
pub(super) struct Concluding {
    partition: u32,
    key: u64,
    /// Its main-topic offset.
    origin: u64,
    /// The stage it concluded as: a replayed dead-held record, on the held level, as a head.
    stage: Stage,
    /// Its (partition, offset), when it was a replayed dead-held record: no longer one once
    /// [`KeyOrder::concluded`].
    replayed: Option<(u32, u64)>,
}

/// One level's view of its handler's holds: what the loop asks before it starts a record and
/// tells when one concludes. With `concurrency > 1` it also knows the keys with an attempt
/// under way on this level: different keys run in parallel, one key at a time.
pub(super) struct KeyOrder {
    holds: Arc<KeyHolds>,
    stage: Stage,
    releases: watch::Receiver<u64>,
    /// (partition, key) of the attempts under way, when several may be (`concurrency > 1`).
    busy: Option<HashSet<(u32, u64)>>,
    /// Keys passed over in the current look along a partition's waiting records (see
    /// [`may_start_in_scan`](Self::may_start_in_scan)); kept for its capacity.
    passed: HashSet<u64>,
    /// (partition, offset) of the dead-held records being replayed here: they conclude as heads.
    replaying: HashSet<(u32, u64)>,
    /// On the held level, when to look for resolutions it cannot fetch (see
    /// [`look_for_resolutions`](Self::look_for_resolutions)).
    look_at: Option<Instant>,
}

impl KeyOrder {
    pub(super) fn new(holds: Arc<KeyHolds>, stage: Stage, concurrency: usize) -> Self {
        let releases = holds.releases();
        Self {
            holds,
            stage,
            releases,
            busy: (concurrency > 1).then(HashSet::new),
            passed: HashSet::new(),
            replaying: HashSet::new(),
            look_at: None,
        }
    }

    /// Whether a record of `key` has an attempt under way here.
    fn is_busy(&self, partition: u32, key: Option<u64>) -> bool {
        match (&self.busy, key) {
            (Some(busy), Some(key)) => busy.contains(&(partition, key)),
            _ => false,
        }
    }

    /// An attempt of `record` starts: its key is busy here until it concludes.
    pub(super) fn started(&mut self, record: &Record) {
        if let Some(busy) = &mut self.busy {
            if let Some(key) = self.holds.key_of(record) {
                busy.insert((record.partition, key));
            }
        }
    }

    /// An attempt of `record` concluded (whatever its outcome, stale or not): its key is no
    /// longer busy here. Returns what its hold counts, read before the record is handed on;
    /// `None` when the conclusion changes no hold (a main-topic success, a record without a key).
    pub(super) fn concluding(&mut self, record: &Record, succeeded: bool) -> Option<Concluding> {
        let key = self.holds.key_of(record);
        if let (Some(busy), Some(key)) = (&mut self.busy, key) {
            busy.remove(&(record.partition, key));
        }
        // Still replaying until concluded: an attempt the breaker held back starts again as
        // the head it is.
        let replayed = self
            .is_replaying(record)
            .then_some((record.partition, record.offset));
        if succeeded && self.stage == Stage::Main {
            return None;
        }
        Some(Concluding {
            partition: record.partition,
            key: key?,
            origin: self.origin_offset(record),
            stage: if replayed.is_some() {
                Stage::Retry
            } else {
                self.stage
            },
            replayed,
        })
    }

    /// Whether `record` is a dead-held record being replayed here.
    fn is_replaying(&self, record: &Record) -> bool {
        !self.replaying.is_empty() && self.replaying.contains(&(record.partition, record.offset))
    }

    /// What [`begin`](Self::begin) returned `Replay` for starts: no longer dead, a head of its
    /// key until it concludes here.
    pub(super) fn replaying(&mut self, record: &Record) {
        let key = self.holds.key_of(record);
        self.holds.take_resolution(record.partition, key, record.offset);
        self.replaying.insert((record.partition, record.offset));
    }

    /// What [`begin`](Self::begin) returned `Discard` for goes to its queue: its key's hold
    /// loses that head.
    pub(super) fn discarding(&self, record: &Record) {
        let key = self.holds.key_of(record);
        self.holds.take_resolution(record.partition, key, record.offset);
        if let Some(key) = key {
            let origin = self.origin_offset(record);
            self.holds
                .concluded(record.partition, key, Stage::Retry, Conclusion::Done, origin);
        }
    }

    /// Whether this is the held level.
    pub(super) fn reads_held_topic(&self) -> bool {
        self.stage == Stage::Held
    }

    /// Whether `record`, waiting on the held level, waits for an operator: its key is held by
    /// a dead-held record (itself, or one the partition may not have fetched).
    pub(super) fn waits_for_operator(&self, record: &Record) -> bool {
        self.stage == Stage::Held
            && self
                .holds
                .key_of(record)
                .is_some_and(|key| self.holds.has_dead(record.partition, key))
    }

    /// When to look for resolutions past what `stuck` partitions can fetch: a held partition
    /// is full (records kept in memory are bounded) and one of its records waits for an
    /// operator, whose resolution is further on the topic, where the partition does not read
    /// until records it keeps start; without a look, none would. Every
    /// [`RESOLUTION_LOOK`] while it lasts; `None` when nothing is stuck.
    pub(super) fn resolution_look(&mut self, stuck: bool) -> Option<Instant> {
        if !stuck {
            self.look_at = None;
            return None;
        }
        Some(
            *self
                .look_at
                .get_or_insert_with(|| Instant::now() + RESOLUTION_LOOK),
        )
    }

    /// Reads the resolutions of `partitions` from the held topic (see
    /// [`resolution_look`](Self::resolution_look)); returns the resolved dead-held records read,
    /// for the level to put in those it has not fetched.
    pub(super) async fn look_for_resolutions(&mut self, partitions: Vec<u32>) -> Vec<Record> {
        self.look_at = Some(Instant::now() + RESOLUTION_LOOK);
        match self.holds.read_resolutions(partitions.clone()).await {
            Ok(resolved) => {
                tracing::debug!(
                    ?partitions,
                    resolved = resolved.len(),
                    "looked for resolutions past full held partitions"
                );
                resolved
            }
            Err(error) => {
                tracing::warn!(?partitions, %error, "looking for resolutions past full held partitions failed; trying again");
                Vec::new()
            }
        }
    }

    /// An operator's resolution read here ([`Begin::Resolve`]): the record it names may start.
    pub(super) fn resolve(&self, partition: u32, of: u64, how: Resolution) {
        self.holds.resolve(partition, of, how);
    }

    /// What starting `record` means here; `None` when it may not start: a dead-held record
    /// not resolved yet (which [`may_start`](Self::may_start) keeps waiting anyway). On the
    /// main topic a held key's record is counted as a follower here.
    pub(super) fn begin(&self, record: &Record) -> Option<Begin> {
        Some(match self.stage {
            Stage::Main => match self.hold_back(record) {
                Some(behind) => Begin::HoldBack(behind),
                None => Begin::Attempt,
            },
            Stage::Retry => Begin::Attempt,
            // Its replay put back (the breaker held its failure back): attempted again.
            Stage::Held if self.is_replaying(record) => Begin::Attempt,
            Stage::Held => match HeldRecord::of(&record.headers) {
                HeldRecord::Follower => Begin::Attempt,
                HeldRecord::Resolution { of, how } => Begin::Resolve { of, how },
                HeldRecord::Dead { queue } => match self.holds.resolution(record.partition, record.offset)? {
                    Resolution::Replay => Begin::Replay,
                    Resolution::Discard => Begin::Discard(queue),
                },
            },
        })
    }

    /// Whether `record` may be attempted now. Only the held level waits: for a key without a
    /// head. Marks the releases seen, so [`released`](Self::released) wakes only for later ones.
    pub(super) fn may_start(&mut self, record: &Record) -> bool {
        let key = self.holds.key_of(record);
        self.may_start_key(record, key)
    }

    /// Starts a look along one partition's waiting records, in offset order, with
    /// [`may_start_in_scan`](Self::may_start_in_scan).
    pub(super) fn begin_scan(&mut self) {
        self.passed.clear();
    }

    /// [`may_start`](Self::may_start) for the next waiting record of a look begun with
    /// [`begin_scan`](Self::begin_scan): a key passed over earlier in the look stays passed
    /// over, so no record overtakes an earlier one of its key even when the key's head
    /// concludes (on another level's task) while the look goes on.
    /// A resolution, and a dead-held record once resolved, go past the key's waiting records:
    /// the one is not of the key's line, the other heads it.
    pub(super) fn may_start_in_scan(&mut self, record: &Record) -> bool {
        let key = self.holds.key_of(record);
        let heads_its_key = self.stage == Stage::Held
            && (self.is_replaying(record) || HeldRecord::of(&record.headers) != HeldRecord::Follower);
        if !heads_its_key && key.is_some_and(|key| self.passed.contains(&key)) {
            return false;
        }
        let may = self.may_start_key(record, key);
        if let (false, Some(key)) = (may, key) {
            self.passed.insert(key);
        }
        may
    }

    fn may_start_key(&mut self, record: &Record, key: Option<u64>) -> bool {
        if self.stage != Stage::Main {
            self.releases.borrow_and_update();
        }
        self.may_start_now_key(record, key)
    }

    /// [`may_start`](Self::may_start) without marking releases seen, for a look that only
    /// decides when to wake.
    pub(super) fn may_start_now(&self, record: &Record) -> bool {
        self.may_start_now_key(record, self.holds.key_of(record))
    }

    fn may_start_now_key(&self, record: &Record, key: Option<u64>) -> bool {
        if self.is_busy(record.partition, key) {
            return false;
        }
        match self.stage {
            Stage::Main => true,
            // A key's head runs once its partition's holds are counted (else its conclusion
            // could come before the count and be counted again).
            Stage::Retry => self.holds.is_counted(record.partition),
            Stage::Held if self.is_replaying(record) => true,
            Stage::Held => {
                self.holds.is_counted(record.partition)
                    && match HeldRecord::of(&record.headers) {
                        HeldRecord::Follower => {
                            key.is_none_or(|key| self.holds.is_free(record.partition, key))
                        }
                        HeldRecord::Dead { .. } => {
                            self.holds.resolution(record.partition, record.offset).is_some()
                        }
                        HeldRecord::Resolution { .. } => true,
                    }
            }
        }
    }

    /// On the main topic: the holds of newly assigned partitions are counted before any of
    /// their records starts; lost ones are forgotten.
    pub(super) async fn assigned(&self, partitions: &[u32]) -> Result<(), BackendError> {
        if self.stage != Stage::Main {
            return Ok(());
        }
        self.holds.count(partitions.to_vec()).await
    }

    pub(super) fn revoked(&mut self, partitions: &[u32]) {
        if self.stage == Stage::Main {
            self.holds.forget(partitions);
        }
        self.replaying
            .retain(|(partition, _)| !partitions.contains(partition));
    }

    /// On the main topic, for a record whose key is held: the main-topic offset it waits
    /// behind (it is counted as a follower). `None` elsewhere, or when it may be attempted.
    pub(super) fn hold_back(&self, record: &Record) -> Option<u64> {
        if self.stage != Stage::Main {
            return None;
        }
        let key = self.holds.key_of(record)?;
        self.holds.hold_back(record.partition, key)
    }

    /// A record concluded as `conclusion` says ([`concluding`](Self::concluding) read it).
    pub(super) fn concluded(&mut self, concluding: Concluding, conclusion: Conclusion) {
        let Concluding {
            partition,
            key,
            origin,
            stage,
            replayed,
        } = concluding;
        if let Some(replayed) = replayed {
            self.replaying.remove(&replayed);
        }
        self.holds.concluded(partition, key, stage, conclusion, origin);
    }

    /// The main-topic offset of `record`: its own on the main topic, else as its headers say.
    fn origin_offset(&self, record: &Record) -> u64 {
        match self.stage {
            Stage::Main => record.offset,
            _ => origin_offset(&record.headers).unwrap_or(record.offset),
        }
    }

    /// Whether this level waits for releases and counts: the retry levels and the held level.
    pub(super) fn waits_for_releases(&self) -> bool {
        self.stage != Stage::Main
    }

    /// A key's last head concluded since [`may_start`](Self::may_start) last looked.
    /// Cancel-safe; pending forever once the holds are gone.
    pub(super) async fn released(&mut self) {
        if self.releases.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn origin_offset(headers: &Headers) -> Option<u64> {
    headers.get_str(names::ORIGINAL_OFFSET)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(partition: u32, key: &str) -> Record {
        Record {
            partition,
            offset: 0,
            timestamp_ms: None,
            key: Some(bytes::Bytes::copy_from_slice(key.as_bytes())),
            payload: None,
            headers: Headers::new(),
        }
    }

    #[test]
    fn a_key_is_held_from_its_first_retry_until_its_last_follower_concluded() {
        let holds = KeyHolds::default();
        let k = holds.key_of(&record(0, "k")).unwrap();
        let other = holds.key_of(&record(0, "other")).unwrap();
        assert_eq!(holds.hold_back(0, k), None, "nothing failed yet");
        // k's record at offset 10 fails on the main topic and goes to level 1.
        holds.concluded(0, k, Stage::Main, Conclusion::Retried, 10);
        assert_eq!(
            holds.hold_back(0, k),
            Some(10),
            "the next record of k is held back"
        );
        assert_eq!(holds.hold_back(0, k), Some(10));
        assert_eq!(holds.hold_back(0, other), None, "another key flows");
        assert_eq!(
            holds.hold_back(1, k),
            None,
            "the same key in another partition flows"
        );
        assert!(!holds.is_free(0, k), "followers wait while the head is out");
        assert_eq!(holds.counts(), (1, 2));
        // The head fails on level 1 and goes to level 2: still out.
        holds.concluded(0, k, Stage::Retry, Conclusion::Retried, 10);
        assert!(!holds.is_free(0, k));
        // It succeeds on level 2: the followers may go, and a main record still waits behind them.
        holds.concluded(0, k, Stage::Retry, Conclusion::Done, 10);
        assert!(holds.is_free(0, k));
        assert_eq!(holds.hold_back(0, k), Some(10), "followers are still waiting");
        // The first follower fails: it is the key's head now.
        holds.concluded(0, k, Stage::Held, Conclusion::Retried, 11);
        assert!(!holds.is_free(0, k));
        holds.concluded(0, k, Stage::Retry, Conclusion::Done, 11);
        holds.concluded(0, k, Stage::Held, Conclusion::Done, 12);
        holds.concluded(0, k, Stage::Held, Conclusion::Done, 13);
        assert_eq!(holds.counts(), (0, 0), "the hold is gone");
        assert_eq!(holds.hold_back(0, k), None);
    }

    #[tokio::test]
    async fn a_release_wakes_the_held_level_once() {
        let holds = std::sync::Arc::new(KeyHolds::default());
        let mut order = KeyOrder::new(holds.clone(), Stage::Held, 1);
        let r = record(3, "k");
        assert!(!order.may_start(&r), "partition 3's holds are not counted yet");
        KeyOrder::new(holds.clone(), Stage::Main, 1)
            .assigned(&[3])
            .await
            .unwrap();
        assert!(
            order.releases.has_changed().unwrap(),
            "the count wakes the held level"
        );
        assert!(order.may_start(&r));
        let k = holds.key_of(&r).unwrap();
        holds.concluded(3, k, Stage::Main, Conclusion::Retried, 1);
        assert!(!order.may_start(&r));
        assert!(!order.releases.has_changed().unwrap());
        holds.concluded(3, k, Stage::Retry, Conclusion::Done, 1);
        assert!(order.releases.has_changed().unwrap());
        assert!(order.may_start(&r));
        assert!(!order.releases.has_changed().unwrap(), "seen");
    }

    #[tokio::test]
    async fn a_look_along_waiting_records_never_lets_a_later_record_of_a_key_overtake() {
        let holds = std::sync::Arc::new(KeyHolds::default());
        holds.count(vec![0]).await.unwrap();
        let mut held = KeyOrder::new(holds.clone(), Stage::Held, 1);
        let (first, other, second) = (record(0, "k"), record(0, "other"), record(0, "k"));
        let k = holds.key_of(&first).unwrap();
        holds.concluded(0, k, Stage::Main, Conclusion::Retried, 1);
        held.begin_scan();
        assert!(!held.may_start_in_scan(&first), "k's head is out");
        // The head concludes on the retry level's task while this look goes on.
        holds.concluded(0, k, Stage::Retry, Conclusion::Done, 1);
        assert!(held.may_start_in_scan(&other));
        assert!(
            !held.may_start_in_scan(&second),
            "k's first waiting record was passed over: its second must not start before it"
        );
        held.begin_scan();
        assert!(
            held.may_start_in_scan(&first),
            "the next look starts k's first record"
        );
    }

    fn held_record(
        partition: u32,
        offset: u64,
        key: &str,
        headers: &[(&'static str, &'static str)],
    ) -> Record {
        Record {
            offset,
            headers: headers.iter().copied().collect(),
            ..record(partition, key)
        }
    }

    #[tokio::test]
    async fn a_dead_held_head_holds_its_key_until_an_operator_resolves_it() {
        let holds = std::sync::Arc::new(KeyHolds::default());
        holds.count(vec![0]).await.unwrap();
        let main = KeyOrder::new(holds.clone(), Stage::Main, 1);
        let mut held = KeyOrder::new(holds.clone(), Stage::Held, 1);
        let k = holds.key_of(&record(0, "k")).unwrap();
        // k's record at main offset 7 fails for the last time: it goes to the held topic, dead.
        holds.concluded(0, k, Stage::Main, Conclusion::DeadHeld, 7);
        assert_eq!(holds.dead(), 1);
        assert_eq!(
            main.begin(&record(0, "k")),
            Some(Begin::HoldBack(7)),
            "later records wait"
        );
        let follower = held_record(0, 40, "k", &[]);
        let dead = held_record(
            0,
            41,
            "k",
            &[(names::DEAD_HELD, "dlq"), (names::ORIGINAL_OFFSET, "7")],
        );
        assert!(!held.may_start(&follower), "the key is held by its dead head");
        assert!(!held.may_start(&dead), "not resolved yet");
        assert_eq!(held.begin(&dead), None);
        // The operator replays it: the resolution starts at once, and then the dead head does,
        // ahead of the follower before it.
        let replay = held_record(
            0,
            42,
            "k",
            &[(names::RESOLVES, "41"), (names::RESOLUTION, "replay")],
        );
        held.begin_scan();
        assert!(!held.may_start_in_scan(&follower));
        assert!(
            held.may_start_in_scan(&replay),
            "a resolution is not of the key's line"
        );
        assert_eq!(
            held.begin(&replay),
            Some(Begin::Resolve {
                of: 41,
                how: Resolution::Replay
            })
        );
        held.resolve(0, 41, Resolution::Replay);
        held.begin_scan();
        assert!(!held.may_start_in_scan(&follower), "the key is still held");
        assert!(
            held.may_start_in_scan(&dead),
            "the resolved dead head goes past its follower"
        );
        assert_eq!(held.begin(&dead), Some(Begin::Replay));
        held.replaying(&dead);
        assert_eq!(holds.dead(), 0);
        assert!(
            !held.may_start(&follower),
            "its replay is under way: a head still"
        );
        // Its attempt fails while the breaker is open: put back with a replay's headers (no
        // longer dead-held), it starts again as the head it is.
        let replayed = held_record(
            0,
            41,
            "k",
            &[(names::REPLAYS, "1"), (names::ORIGINAL_OFFSET, "7")],
        );
        let _ = held.concluding(&replayed, false);
        assert!(held.may_start(&replayed), "the put-back replay starts again");
        assert_eq!(held.begin(&replayed), Some(Begin::Attempt));
        assert!(!held.may_start(&follower));
        // The replay succeeds: it concludes as a head, and the follower may go.
        let concluding = held.concluding(&replayed, true).unwrap();
        held.concluded(concluding, Conclusion::Done);
        assert!(held.may_start(&follower));
        assert_eq!(holds.counts(), (1, 1), "the follower still waits: counted");
    }

    #[tokio::test]
    async fn a_discarded_dead_head_releases_its_key_and_a_count_restores_dead_heads() {
        let holds = std::sync::Arc::new(KeyHolds::new(
            KeyHoldHandles::default(),
            std::sync::Arc::new(|_| {
                Box::pin(async {
                    let dead = held_record(
                        2,
                        5,
                        "k",
                        &[(names::DEAD_HELD, "parked"), (names::ORIGINAL_OFFSET, "3")],
                    );
                    let follower = held_record(2, 6, "k", &[]);
                    let discard = held_record(
                        2,
                        9,
                        "k",
                        &[(names::RESOLVES, "5"), (names::RESOLUTION, "discard")],
                    );
                    Ok(vec![(Stage::Held, vec![dead, follower, discard])])
                })
            }),
        ));
        holds.count(vec![2]).await.unwrap();
        assert_eq!(
            (holds.counts(), holds.dead()),
            ((1, 1), 1),
            "the dead head and its follower, counted"
        );
        let mut held = KeyOrder::new(holds.clone(), Stage::Held, 1);
        let dead = held_record(
            2,
            5,
            "k",
            &[(names::DEAD_HELD, "parked"), (names::ORIGINAL_OFFSET, "3")],
        );
        let follower = held_record(2, 6, "k", &[]);
        assert!(!held.may_start(&follower));
        assert_eq!(
            held.begin(&dead),
            Some(Begin::Discard(TopicRole::Parked)),
            "the resolution counted with it: discard to the parking queue it stands for"
        );
        held.discarding(&dead);
        assert_eq!(holds.dead(), 0);
        assert!(held.may_start(&follower), "the key goes on");
        holds.forget(&[2]);
        assert_eq!((holds.counts(), holds.dead()), ((0, 0), 0));
    }

    #[tokio::test]
    async fn records_without_a_key_are_never_held() {
        let holds = std::sync::Arc::new(KeyHolds::default());
        holds.count(vec![0]).await.unwrap();
        let mut keyless = record(0, "");
        keyless.key = None;
        let main = KeyOrder::new(holds.clone(), Stage::Main, 1);
        let mut held = KeyOrder::new(holds, Stage::Held, 1);
        assert_eq!(main.hold_back(&keyless), None);
        assert!(held.may_start(&keyless));
    }

    #[tokio::test]
    async fn a_revoked_partition_forgets_its_holds_until_counted_again() {
        let holds = std::sync::Arc::new(KeyHolds::default());
        holds.count(vec![0, 1]).await.unwrap();
        let (a, b) = (record(0, "a"), record(1, "b"));
        let (ka, kb) = (holds.key_of(&a).unwrap(), holds.key_of(&b).unwrap());
        holds.concluded(0, ka, Stage::Main, Conclusion::Retried, 5);
        holds.concluded(1, kb, Stage::Main, Conclusion::Retried, 6);
        assert_eq!(holds.hold_back(0, ka), Some(5));
        assert_eq!(holds.counts(), (2, 1));
        holds.forget(&[0]);
        assert_eq!(holds.counts(), (1, 0), "partition 0's hold and follower are gone");
        assert!(!holds.is_counted(0) && holds.is_counted(1));
        let retry = KeyOrder::new(holds.clone(), Stage::Retry, 1);
        assert!(
            !retry.may_start_now(&a),
            "partition 0's retries wait for the next count"
        );
        assert!(retry.may_start_now(&b));
    }
}
