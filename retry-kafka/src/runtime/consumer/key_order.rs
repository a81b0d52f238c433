//! One level's view of its handler's holds ([`KeyOrder`]): what the consumer loop asks before
//! it starts a record ([`Begin`]) and tells when one concludes; per level, the keys with an
//! attempt under way (`concurrency > 1`), the dead-held records being replayed, and when the
//! held level looks past a full partition for resolutions. The holds themselves, shared by the
//! handler's levels, are [`KeyHolds`](super::key_holds::KeyHolds).

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;

use super::key_holds::{origin_offset, Conclusion, KeyHolds, Stage};
use crate::backend::{Record, TopicRole};
use crate::error::BackendError;
use crate::held_keys::{HeldRecord, Resolution};

/// How often a held level looks for resolutions it cannot fetch (see
/// [`KeyOrder::resolution_look`]).
const RESOLUTION_LOOK: std::time::Duration = std::time::Duration::from_secs(2);

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
        let kind = self.held_kind(record);
        self.may_start_key(record, key, kind)
    }

    /// What kind of held-topic record `record` is, read once per look at it; `None` on the
    /// other stages, and for a replay put back (attempted again, whatever its headers say).
    fn held_kind(&self, record: &Record) -> Option<HeldRecord> {
        (self.stage == Stage::Held && !self.is_replaying(record)).then(|| HeldRecord::of(&record.headers))
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
        let kind = self.held_kind(record);
        let heads_its_key = self.stage == Stage::Held && kind != Some(HeldRecord::Follower);
        if !heads_its_key && key.is_some_and(|key| self.passed.contains(&key)) {
            return false;
        }
        let may = self.may_start_key(record, key, kind);
        if let (false, Some(key)) = (may, key) {
            self.passed.insert(key);
        }
        may
    }

    fn may_start_key(&mut self, record: &Record, key: Option<u64>, kind: Option<HeldRecord>) -> bool {
        if self.stage != Stage::Main {
            self.releases.borrow_and_update();
        }
        self.may_start_now_key(record, key, kind)
    }

    /// [`may_start`](Self::may_start) without marking releases seen, for a look that only
    /// decides when to wake.
    pub(super) fn may_start_now(&self, record: &Record) -> bool {
        self.may_start_now_key(record, self.holds.key_of(record), self.held_kind(record))
    }

    /// `kind`: [`held_kind`](Self::held_kind) of `record`.
    fn may_start_now_key(&self, record: &Record, key: Option<u64>, kind: Option<HeldRecord>) -> bool {
        if self.is_busy(record.partition, key) {
            return false;
        }
        match self.stage {
            Stage::Main => true,
            // A key's head runs once its partition's holds are counted (else its conclusion
            // could come before the count and be counted again).
            Stage::Retry => self.holds.is_counted(record.partition),
            Stage::Held => match kind {
                // A replay put back.
                None => true,
                Some(kind) => {
                    self.holds.is_counted(record.partition)
                        && match kind {
                            HeldRecord::Follower => {
                                key.is_none_or(|key| self.holds.is_free(record.partition, key))
                            }
                            HeldRecord::Dead { .. } => {
                                self.holds.resolution(record.partition, record.offset).is_some()
                            }
                            HeldRecord::Resolution { .. } => true,
                        }
                }
            },
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

#[cfg(test)]
mod tests;
