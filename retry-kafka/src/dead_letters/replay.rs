//! Replaying dead letters and parked entries: the loop guard, the checkpoint that makes a
//! killed replay resume without sending anything twice (found again by `rk-replay-of`), and
//! what a replay reports.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{DeadLetter, Filter, Scan, DEFAULT_PAGE};
use crate::backend::{Browse, OutboundRecord, Publish, Topic, TopicRole};
use crate::clock::now_ms;
use crate::error::BackendError;
use crate::headers::{self, names, HeaderError, Headers};

/// A replay failed; what it sent so far is in its checkpoint, and running it again resumes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// Reading or writing a topic failed.
    #[error("the replay could not reach the broker")]
    Backend(#[from] BackendError),
    /// The checkpoint file could not be read or written.
    #[error("the replay checkpoint {path:?} could not be {action}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// `read` or `written`.
        action: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The checkpoint file belongs to another replay.
    #[error("the replay checkpoint {path:?} is for {found}, not {expected}; pass another checkpoint file")]
    OtherReplay {
        /// The file.
        path: PathBuf,
        /// The replay asked for, `source -> target`.
        expected: String,
        /// The replay the file records.
        found: String,
    },
    /// An entry cannot go to a retry level: its failure context does not read.
    #[error("entry {position} of {topic} cannot be replayed onto a retry level")]
    NoContext {
        /// The queue.
        topic: String,
        /// `{partition}:{offset}`.
        position: String,
        /// The header at fault.
        #[source]
        source: HeaderError,
    },
}

/// What happens to an entry in a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// It is sent.
    Send,
    /// Not sent: it was replayed as often as the limit allows already (the loop guard), and
    /// the replay is not forced.
    Guarded,
    /// Not sent again: an earlier run of this replay sent it (its checkpoint says so).
    AlreadySent,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayReport {
    /// Entries sent by this run.
    pub sent: u64,
    /// Entries an earlier, interrupted run had sent (recorded in the checkpoint, or found in
    /// the target on resume), not sent again.
    pub already_sent: u64,
    /// Entries held back by the loop guard.
    pub guarded: u64,
    /// The first [`HELD_BACK_NAMED`] of them, as `{partition}:{offset}`.
    pub held_back: Vec<String>,
}

/// How many held-back entries a [`ReplayReport`] names (it counts them all).
pub const HELD_BACK_NAMED: usize = 100;

/// Progress of a running replay, for a progress bar.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct Progress {
    /// Entries of the queue read so far, selected or not.
    pub read: u64,
    /// Entries sent so far by this run.
    pub sent: u64,
    /// Entries held back by the loop guard so far.
    pub guarded: u64,
}

/// Replays entries of a dead-letter or parking queue onto a main topic or a retry level.
///
/// It reads the queue a page at a time ([`Scan`]) and sends a batch at a time, every record of
/// a batch in flight at once (the backend pipelines them), so a replay of a million entries
/// holds a page and a batch in memory and waits for the broker once a batch.
pub struct Replay<'b, B> {
    backend: &'b B,
    source: Topic,
    target: Topic,
    parking: Option<Topic>,
    selection: String,
    checkpoint: Option<PathBuf>,
    max_replays: u32,
    force: bool,
    batch: usize,
}

/// Replays an entry at most this many times by default: the loop guard.
pub const DEFAULT_MAX_REPLAYS: u32 = 3;

/// Entries a replay sends at once, between two checkpoint writes, by default.
pub const DEFAULT_BATCH: usize = 1000;

impl<'b, B: Browse + Publish> Replay<'b, B> {
    /// A replay from `source` (a dead-letter or parking queue) onto `target` (a main topic or
    /// a retry level), without a checkpoint (see [`checkpoint`](Self::checkpoint)), guarded at
    /// [`DEFAULT_MAX_REPLAYS`].
    pub fn new(backend: &'b B, source: Topic, target: Topic) -> Self {
        Self {
            backend,
            source,
            target,
            parking: None,
            selection: String::new(),
            checkpoint: None,
            max_replays: DEFAULT_MAX_REPLAYS,
            force: false,
            batch: DEFAULT_BATCH,
        }
    }

    /// Records progress in `path`, so that the same replay run again after an interruption
    /// resumes and sends nothing twice. Removed when the replay finishes.
    pub fn checkpoint(mut self, path: impl Into<PathBuf>) -> Self {
        self.checkpoint = Some(path.into());
        self
    }

    /// Describes how the entries were selected (the filter as given), so that a checkpoint is
    /// resumed only by the same selection: its entries are settled in queue order, and another
    /// selection's entries would not be.
    pub fn selection(mut self, selection: impl Into<String>) -> Self {
        self.selection = selection.into();
        self
    }

    /// The handler's parking queue, where a replay that fails again lands. The loop guard counts
    /// an entry's earlier replays by the copies there that carry its `rk-replay-origin`: a dead
    /// letter never learns of its replays (they go to the main topic, and their failures here).
    /// Without it the guard reads the entry's own `rk-replays` only.
    pub fn parking(mut self, queue: Topic) -> Self {
        self.parking = Some(queue);
        self
    }

    /// The loop guard: an entry replayed this many times already is not replayed again.
    pub fn max_replays(mut self, max: u32) -> Self {
        self.max_replays = max;
        self
    }

    /// Replays entries the loop guard would hold back, too.
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }

    /// How many entries are sent at once, between two checkpoint writes (default
    /// [`DEFAULT_BATCH`]).
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    fn describe(&self) -> String {
        match self.selection.as_str() {
            "" => format!("{} -> {}", self.source, self.target),
            selection => format!("{} -> {} [{selection}]", self.source, self.target),
        }
    }

    /// Calls `each` with every entry `filter` selects and what [`run`](Self::run) would do
    /// with it, in queue order, sending nothing.
    pub async fn plan(
        &self,
        filter: &Filter,
        mut each: impl FnMut(&DeadLetter, Action),
    ) -> Result<(), ReplayError> {
        let state = self.load()?;
        let earlier = self.earlier_replays().await?;
        let mut scan = Scan::new(self.backend, self.source.clone()).await?;
        while let Some(entry) = scan.next().await? {
            if filter.matches(&entry) {
                each(&entry, self.action(&entry, &state, &earlier));
            }
        }
        Ok(())
    }

    fn action(&self, entry: &DeadLetter, state: &Checkpoint, earlier: &EarlierReplays) -> Action {
        let (partition, offset) = (entry.record.partition, entry.record.offset);
        if state.done.get(&partition).is_some_and(|&next| offset < next)
            || state.resumed.contains(&(partition, offset))
        {
            Action::AlreadySent
        } else if !self.force && self.replays_of(entry, earlier) >= self.max_replays {
            Action::Guarded
        } else {
            Action::Send
        }
    }

    /// Times `entry`'s line was replayed: its own `rk-replays` (a parked copy counts the hops
    /// that led to it) or the parking queue's copies of its origin, whichever says more.
    fn replays_of(&self, entry: &DeadLetter, earlier: &EarlierReplays) -> u32 {
        let position = self.replay_of(entry.record.partition, entry.record.offset);
        let origin = origin_of(&entry.record.headers, &position);
        entry.replays().max(earlier.get(origin).copied().unwrap_or(0))
    }

    /// The parking queue's copies per `rk-replay-origin` (only origins that have one are kept:
    /// memory grows with the parking queue's distinct lines, not with the source queue).
    async fn earlier_replays(&self) -> Result<EarlierReplays, ReplayError> {
        let mut counts = EarlierReplays::new();
        let Some(parking) = &self.parking else {
            return Ok(counts);
        };
        let mut scan = Scan::new(self.backend, parking.clone()).await?;
        while let Some(copy) = scan.next().await? {
            if let Some(origin) = copy.record.headers.get_str(names::REPLAY_ORIGIN) {
                *counts.entry(origin.to_owned()).or_default() += 1;
            }
        }
        Ok(counts)
    }

    /// Sends the entries of the source queue that `filter` selects, in queue order, calling
    /// `progress` as it goes. A run resumed from its checkpoint reads the queue from where the
    /// interrupted one had settled everything.
    pub async fn run(
        &self,
        filter: &Filter,
        mut progress: impl FnMut(Progress),
    ) -> Result<ReplayReport, ReplayError> {
        let mut state = self.load()?;
        // An interrupted batch was in flight all at once, so any of its records may have
        // landed: each one found in the target is settled (and recorded so), the rest are sent
        // again when the scan comes to them.
        if let Some(pending) = state.pending.take() {
            let sent = self.sent_since(&pending.target_ends).await?;
            for (partition, offset) in pending.entries {
                if sent.contains(&self.replay_of(partition, offset)) {
                    state.resumed.insert((partition, offset));
                    state.sent += 1;
                }
            }
            self.save(&state)?;
        }
        let earlier = self.earlier_replays().await?;
        let mut report = ReplayReport {
            already_sent: state.sent,
            ..ReplayReport::default()
        };
        let mut scan = Scan::new(self.backend, self.source.clone())
            .await?
            .from(&state.done);
        // Per partition, one past the last entry read: all before it is settled once the
        // batch in hand is sent.
        let mut read_to = BTreeMap::new();
        let mut batch = Vec::with_capacity(self.batch);
        let mut tell = |report: &ReplayReport, scan: &Scan<'_, B>| {
            progress(Progress {
                read: scan.read(),
                sent: report.sent,
                guarded: report.guarded,
            })
        };
        loop {
            let entry = scan.next().await?;
            if let Some(entry) = &entry {
                read_to.insert(entry.record.partition, entry.record.offset + 1);
                if filter.matches(entry) {
                    match self.action(entry, &state, &earlier) {
                        Action::Send => batch.push(entry.clone()),
                        Action::Guarded => {
                            report.guarded += 1;
                            if report.held_back.len() < HELD_BACK_NAMED {
                                report.held_back.push(entry.position());
                            }
                        }
                        Action::AlreadySent => {}
                    }
                }
                if scan.read().is_multiple_of(DEFAULT_PAGE as u64) {
                    tell(&report, &scan);
                }
            }
            if batch.len() == self.batch || (entry.is_none() && !batch.is_empty()) {
                self.send(&mut state, &batch, &read_to).await?;
                report.sent += batch.len() as u64;
                batch.clear();
                tell(&report, &scan);
            }
            if entry.is_none() {
                break;
            }
        }
        tell(&report, &scan);
        if let Some(path) = &self.checkpoint {
            match std::fs::remove_file(path) {
                Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
                    return Err(ReplayError::Checkpoint {
                        path: path.clone(),
                        action: "removed",
                        source,
                    })
                }
                _ => {}
            }
        }
        Ok(report)
    }

    /// Sends `batch`, every record at once, after writing to the checkpoint what it is about to
    /// send, where the target ends and how far the queue was settled by the batches before;
    /// then notes that all read up to `read_to` is settled.
    async fn send(
        &self,
        state: &mut Checkpoint,
        batch: &[DeadLetter],
        read_to: &BTreeMap<u32, u64>,
    ) -> Result<(), ReplayError> {
        let records = batch
            .iter()
            .map(|entry| self.outbound(entry))
            .collect::<Result<Vec<_>, _>>()?;
        state.pending = Some(Pending {
            target_ends: self.backend.end_offsets_of(&self.target).await?,
            entries: batch
                .iter()
                .map(|e| (e.record.partition, e.record.offset))
                .collect(),
        });
        self.save(state)?;
        // Polled in order, so they are queued in queue order (a key's entries stay in order
        // on Kafka's idempotent producer); acknowledged in any order.
        futures_util::future::try_join_all(
            records
                .into_iter()
                .map(|record| self.backend.send(&self.target, record)),
        )
        .await?;
        state.pending = None;
        state.sent += batch.len() as u64;
        for (&partition, &next) in read_to {
            state.advance(partition, next);
        }
        let done = &state.done;
        state
            .resumed
            .retain(|(partition, offset)| done.get(partition).is_none_or(|&next| *offset >= next));
        // Written with the next batch (one durable write a batch, not two: each is a sync of
        // the file and its folder) or removed at the end; a kill before that leaves this batch
        // pending, and a resume finds all of it in the target.
        Ok(())
    }

    /// The `rk-replay-of` of the entry at `partition`/`offset`.
    fn replay_of(&self, partition: u32, offset: u64) -> String {
        format!("{}/{partition}/{offset}", self.source)
    }

    fn outbound(&self, entry: &DeadLetter) -> Result<OutboundRecord, ReplayError> {
        let headers = replayed(
            &entry.record.headers,
            self.target.role,
            &self.replay_of(entry.record.partition, entry.record.offset),
            now_ms(),
        )
        .map_err(|source| ReplayError::NoContext {
            topic: self.source.to_string(),
            position: entry.position(),
            source,
        })?;
        Ok(OutboundRecord {
            // A retry level keeps the partition number of the original (as every hop does);
            // onto a main topic the key picks it, as for any message.
            partition: match self.target.role {
                TopicRole::Retry { .. } => Some(entry.record.partition),
                _ => None,
            },
            key: entry.record.key.clone(),
            payload: entry.record.payload.clone(),
            headers,
        })
    }

    /// The `rk-replay-of` values written to the target after `ends`.
    async fn sent_since(&self, ends: &[u64]) -> Result<HashSet<String>, ReplayError> {
        let records = self.backend.read(&self.target, ends).await?;
        Ok(records
            .iter()
            .filter_map(|r| r.headers.get_str(names::REPLAY_OF))
            .map(str::to_owned)
            .collect())
    }

    fn load(&self) -> Result<Checkpoint, ReplayError> {
        let fresh = Checkpoint {
            replay: self.describe(),
            ..Checkpoint::default()
        };
        let Some(path) = &self.checkpoint else {
            return Ok(fresh);
        };
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(fresh),
            Err(source) => {
                return Err(ReplayError::Checkpoint {
                    path: path.clone(),
                    action: "read",
                    source,
                })
            }
        };
        let state: Checkpoint = serde_json::from_slice(&text).map_err(|error| ReplayError::Checkpoint {
            path: path.clone(),
            action: "read",
            source: error.into(),
        })?;
        if state.replay != fresh.replay {
            return Err(ReplayError::OtherReplay {
                path: path.clone(),
                expected: fresh.replay,
                found: state.replay,
            });
        }
        Ok(state)
    }

    /// Writes the checkpoint durably: a new file, synced, renamed over the old one.
    fn save(&self, state: &Checkpoint) -> Result<(), ReplayError> {
        let Some(path) = &self.checkpoint else {
            return Ok(());
        };
        write_durably(
            path,
            &serde_json::to_vec_pretty(state).expect("plain data serializes"),
        )
        .map_err(|source| ReplayError::Checkpoint {
            path: path.clone(),
            action: "written",
            source,
        })
    }
}

fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Failed replays found in the parking queue, by the origin of their line.
type EarlierReplays = HashMap<String, u32>;

/// A replay's progress as stored between runs.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkpoint {
    /// `source -> target`: a checkpoint is for one replay only.
    replay: String,
    /// Per source partition, the offset every entry before which is settled (sent, held back
    /// or not selected): a resumed run reads the queue from there.
    done: BTreeMap<u32, u64>,
    /// Entries sent so far, by every run.
    #[serde(default)]
    sent: u64,
    /// Entries past `done` that an interrupted batch had sent (found in the target on resume).
    #[serde(default)]
    resumed: BTreeSet<(u32, u64)>,
    /// The batch being sent when the checkpoint was written, if any.
    pending: Option<Pending>,
}

impl Checkpoint {
    fn advance(&mut self, partition: u32, next: u64) {
        let done = self.done.entry(partition).or_default();
        *done = (*done).max(next);
    }
}

/// A batch under way: where the target ended before it, and its entries (partition, offset).
#[derive(Debug, Serialize, Deserialize)]
struct Pending {
    target_ends: Vec<u64>,
    entries: Vec<(u32, u64)>,
}

/// The headers of a dead letter replayed onto a topic of role `to`, sent by a replay as
/// `replay_of` (`{topic}/{partition}/{offset}` of the dead letter) at `now_ms`.
///
/// Onto a main topic every `rk-*` header goes (the attempt count starts afresh) but
/// `rk-replays`, one higher, `rk-replay-of` and `rk-replay-origin` (the entry's own, if it has
/// one: a parked copy of an earlier replay keeps its line's origin). Onto a retry level the failure context stays,
/// due now, so the level runs it at once as its next attempt; that needs a context that reads.
/// A dead-held record replayed where it waits (`TopicRole::Held`, `retry-kafka held replay`)
/// is rewritten as for a retry level.
/// Other headers (`traceparent`, the application's) stay, in order.
///
/// ```
/// use retry_kafka::backend::TopicRole;
/// use retry_kafka::dead_letters::replayed;
/// use retry_kafka::headers::Headers;
///
/// let dead: Headers = [("tenant", "acme"), ("rk-attempts", "4"), ("rk-replays", "1")].into_iter().collect();
/// let again = replayed(&dead, TopicRole::Main, "orders.billing.dlq/0/17", 1_700_000_000_000).unwrap();
/// assert_eq!(again.get_str("tenant"), Some("acme"));
/// assert_eq!(again.get_str("rk-attempts"), None);
/// assert_eq!(again.get_str("rk-replays"), Some("2"));
/// assert_eq!(again.get_str("rk-replay-of"), Some("orders.billing.dlq/0/17"));
/// assert_eq!(again.get_str("rk-replay-origin"), Some("orders.billing.dlq/0/17"));
/// ```
pub fn replayed(
    headers: &Headers,
    to: TopicRole,
    replay_of: &str,
    now_ms: i64,
) -> Result<Headers, HeaderError> {
    let replays = headers::replays(headers).unwrap_or(0).saturating_add(1);
    let origin = origin_of(headers, replay_of).to_owned();
    let mut out = headers.clone();
    match to {
        // A dead-held record replayed where it waits (the held topic) is attempted as a
        // retry level's record is: its failure story kept.
        TopicRole::Retry { .. } | TopicRole::Held => {
            let mut context = headers::FailureContext::from_headers(headers)?;
            context.due_at_ms = Some(now_ms);
            context.replays = Some(replays);
            context.write_to(&mut out);
        }
        _ => {
            out.retain(|name| !name.starts_with(names::PREFIX));
            out.insert(names::REPLAYS, replays.to_string());
        }
    }
    out.insert(names::REPLAY_OF, replay_of.to_owned());
    out.replace(names::REPLAY_ORIGIN, origin);
    Ok(out)
}

/// The entry a line of replays started from: the `rk-replay-origin` an entry carries (a parked
/// copy of an earlier replay), else the entry itself, `position` (`{queue}/{partition}/{offset}`).
fn origin_of<'h>(headers: &'h Headers, position: &'h str) -> &'h str {
    headers.get_str(names::REPLAY_ORIGIN).unwrap_or(position)
}

#[cfg(test)]
mod tests;
