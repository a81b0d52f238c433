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

/// A key's hold in one partition.
#[derive(Debug)]
struct Hold {
    /// Its records on retry levels: waiting there, or being attempted.
    heads: u32,
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

    /// A record of `key` concluded on `stage`: `retried` when it was handed to a retry level
    /// (otherwise it succeeded, or went to the dead letters, the parking queue or nowhere).
    /// `origin` is its main-topic offset.
    pub(crate) fn concluded(&self, partition: u32, key: u64, stage: Stage, retried: bool, origin: u64) {
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
        let (heads, followers) = (hold.heads, hold.followers);
        if heads == 0 && followers == 0 {
            if let Some(ended) = holds.keys.remove(&(partition, key)) {
                self.handles.hold.record(ended.since.elapsed().as_secs_f64());
            }
        }
        self.publish(holds);
        drop(guard);
        if heads_before > 0 && heads == 0 {
            self.released.send_modify(|n| *n = n.wrapping_add(1));
        }
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
        let mut dropped = 0;
        holds.keys.retain(|(partition, _), hold| {
            let keep = !partitions.contains(partition);
            if !keep {
                dropped += u64::from(hold.followers);
            }
            keep
        });
        holds.followers -= dropped;
        for partition in partitions {
            holds.counted.remove(partition);
        }
        self.publish(holds);
    }

    fn restore<'r>(&self, holds: &mut Holds, stage: Stage, records: impl IntoIterator<Item = &'r Record>) {
        for record in records {
            let Some(key) = self.key_of(record) else {
                continue;
            };
            let hold = holds.keys.entry((record.partition, key)).or_default();
            match stage {
                Stage::Retry => {
                    if hold.heads == 0 {
                        hold.behind = origin_offset(&record.headers).unwrap_or(record.offset);
                    }
                    hold.heads += 1;
                }
                Stage::Held => {
                    hold.followers += 1;
                    holds.followers += 1;
                }
                Stage::Main => {}
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

    /// An attempt of `record` concluded (whatever its outcome, stale or not).
    pub(super) fn finished(&mut self, record: &Record) {
        if let Some(busy) = &mut self.busy {
            if let Some(key) = self.holds.key_of(record) {
                busy.remove(&(record.partition, key));
            }
        }
    }

    /// Whether a conclusion here can change a hold: anything but a main-topic success.
    pub(super) fn counts(&self, succeeded: bool) -> bool {
        !(succeeded && self.stage == Stage::Main)
    }

    pub(super) fn key_of(&self, record: &Record) -> Option<u64> {
        self.holds.key_of(record)
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
    pub(super) fn may_start_in_scan(&mut self, record: &Record) -> bool {
        let key = self.holds.key_of(record);
        if key.is_some_and(|key| self.passed.contains(&key)) {
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
            Stage::Held => {
                self.holds.is_counted(record.partition)
                    && key.is_none_or(|key| self.holds.is_free(record.partition, key))
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

    pub(super) fn revoked(&self, partitions: &[u32]) {
        if self.stage == Stage::Main {
            self.holds.forget(partitions);
        }
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

    /// A record of `key` concluded: handed to a retry level (`retried`) or done with.
    pub(super) fn concluded(&self, partition: u32, key: u64, retried: bool, origin: u64) {
        self.holds.concluded(partition, key, self.stage, retried, origin);
    }

    /// The main-topic offset of `record`: its own on the main topic, else as its headers say.
    pub(super) fn origin_offset(&self, record: &Record) -> u64 {
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
        holds.concluded(0, k, Stage::Main, true, 10);
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
        holds.concluded(0, k, Stage::Retry, true, 10);
        assert!(!holds.is_free(0, k));
        // It succeeds on level 2: the followers may go, and a main record still waits behind them.
        holds.concluded(0, k, Stage::Retry, false, 10);
        assert!(holds.is_free(0, k));
        assert_eq!(holds.hold_back(0, k), Some(10), "followers are still waiting");
        // The first follower fails: it is the key's head now.
        holds.concluded(0, k, Stage::Held, true, 11);
        assert!(!holds.is_free(0, k));
        holds.concluded(0, k, Stage::Retry, false, 11);
        holds.concluded(0, k, Stage::Held, false, 12);
        holds.concluded(0, k, Stage::Held, false, 13);
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
        holds.concluded(3, k, Stage::Main, true, 1);
        assert!(!order.may_start(&r));
        assert!(!order.releases.has_changed().unwrap());
        holds.concluded(3, k, Stage::Retry, false, 1);
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
        holds.concluded(0, k, Stage::Main, true, 1);
        held.begin_scan();
        assert!(!held.may_start_in_scan(&first), "k's head is out");
        // The head concludes on the retry level's task while this look goes on.
        holds.concluded(0, k, Stage::Retry, false, 1);
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
        holds.concluded(0, ka, Stage::Main, true, 5);
        holds.concluded(1, kb, Stage::Main, true, 6);
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
