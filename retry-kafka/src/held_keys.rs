//! What a key-ordered handler (`ordering = "key"`) holds, read back from the backend: for each
//! key of each partition with a record out on a retry level (its *heads*), waiting on the
//! held topic (its *followers*) or holding it after its last failure (a *dead head*,
//! `on_dead_letter = "hold_key"`), where they are; and the resolution of a dead head
//! ([`HoldSources::resolve`]).
//!
//! The same records the running handler counts its holds from when it is assigned a
//! partition ([`HoldSources`]): those of its retry levels and held topic that their consumer
//! groups have not acknowledged yet. A record concluded but not acknowledged yet shows until
//! its acknowledgement is committed (at most the commit interval later).
//!
//! ```no_run
//! # async fn show(backend: retry_kafka::backend::kafka::Kafka) -> Result<(), retry_kafka::error::BackendError> {
//! use retry_kafka::app::TopicNaming;
//! use retry_kafka::held_keys::HoldSources;
//!
//! let Some(sources) = HoldSources::find(&backend, "postings", "ledger", &TopicNaming::default()).await? else {
//!     println!("ledger keeps no key order on postings");
//!     return Ok(());
//! };
//! for key in sources.held_keys(&backend).await? {
//!     println!("partition {} key {:?}: {} head(s), {} follower(s)",
//!         key.partition, key.key, key.heads.len(), key.followers);
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::backend::{Backend, Delivered, OutboundRecord, Publish, Record, Topic, TopicRole};
use crate::error::BackendError;
use crate::headers::{names, Headers};
use crate::policy::{derived_group, TopicNaming, Topology};

/// Where a key-ordered handler's holds are read from: its retry levels and its held topic,
/// each read as far as the consumer group that consumes it has acknowledged (each named like
/// its topic: `policy::derived_group`).
#[derive(Clone, Debug)]
pub struct HoldSources {
    levels: Vec<String>,
    held: String,
}

/// A record of a held key out on a retry level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// The retry level it waits on (1 is the first).
    pub level: u32,
    /// Its offset on that level's topic.
    pub offset: u64,
    /// Its offset on the main topic (`rk-original-offset`).
    pub main_offset: Option<u64>,
}

/// A record of a held key that failed for the last time and holds its key until an operator
/// resolves it (`on_dead_letter = "hold_key"`): it waits on the held topic, before the key's
/// later records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadHead {
    /// Its offset on the held topic: what [`HoldSources::resolve`] names.
    pub offset: u64,
    /// Its offset on the main topic (`rk-original-offset`).
    pub main_offset: Option<u64>,
    /// Where a discard sends it: the dead letters, or the parking queue (a replay that failed).
    pub queue: TopicRole,
    /// Attempts that failed (`rk-attempts`).
    pub attempts: Option<u32>,
    /// Times it was replayed (`rk-replays`).
    pub replays: u32,
    /// `rk-error-kind` of its last failure.
    pub error_kind: Option<String>,
    /// `rk-error-message` of its last failure.
    pub error_message: Option<String>,
    /// A resolution written for it that the handler has not applied yet.
    pub resolution: Option<Resolution>,
}

/// How an operator resolves a [`DeadHead`] (`retry-kafka held replay|discard`).
///
/// ```
/// use retry_kafka::held_keys::Resolution;
///
/// assert_eq!(Resolution::parse("replay"), Some(Resolution::Replay));
/// assert_eq!(Resolution::Discard.as_str(), "discard");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Attempt it again, before its key's later records; it counts as a replay (`rk-replays`
    /// one higher) and, failing again after its retries, it is parked (and holds its key again).
    Replay,
    /// Send it to its queue (the dead letters, or the parking queue) and let its key go on.
    Discard,
}

impl Resolution {
    /// As the `rk-resolution` header says it.
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Replay => "replay",
            Resolution::Discard => "discard",
        }
    }

    /// The `rk-resolution` header's value read back; `None` when it is neither.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "replay" => Some(Resolution::Replay),
            "discard" => Some(Resolution::Discard),
            _ => None,
        }
    }
}

/// What a record on a key-ordered handler's held topic is, by its headers: the one reading of
/// them, for the runtime and the tool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeldRecord {
    /// A record held back behind its key, waiting for its first attempt.
    Follower,
    /// A record that failed for the last time and holds its key until resolved; a discard
    /// sends it to `queue`.
    Dead {
        /// The dead letters or the parking queue.
        queue: TopicRole,
    },
    /// An operator's resolution of the dead-held record at offset `of` of the same partition.
    Resolution {
        /// The dead-held record's offset.
        of: u64,
        /// What to do with it.
        how: Resolution,
    },
}

impl HeldRecord {
    /// The kind of a held topic's record with these headers. A resolution that does not read
    /// is taken for a follower's record without a payload: it never resolves anything.
    pub(crate) fn of(headers: &Headers) -> Self {
        if let Some(queue) = headers.get_str(names::DEAD_HELD) {
            let queue = match queue {
                PARKED => TopicRole::Parked,
                _ => TopicRole::DeadLetter,
            };
            return HeldRecord::Dead { queue };
        }
        let resolution = headers
            .get_str(names::RESOLVES)
            .and_then(|of| of.parse().ok())
            .zip(headers.get_str(names::RESOLUTION).and_then(Resolution::parse));
        match resolution {
            Some((of, how)) => HeldRecord::Resolution { of, how },
            None => HeldRecord::Follower,
        }
    }

    /// The `rk-dead-held` value of a record that a discard sends to `queue`.
    pub(crate) fn dead_held_value(queue: TopicRole) -> &'static str {
        match queue {
            TopicRole::Parked => PARKED,
            _ => DEAD_LETTERS,
        }
    }
}

/// `rk-dead-held` values.
const DEAD_LETTERS: &str = "dlq";
const PARKED: &str = "parked";

/// One key held in one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldKey {
    /// The partition, the same on every topic of the handler.
    pub partition: u32,
    /// The key, as the records carry it.
    pub key: Bytes,
    /// Its records on retry levels, in level then offset order.
    pub heads: Vec<Head>,
    /// Its records waiting on the held topic.
    pub followers: u64,
    /// When its oldest follower was held back (`rk-held-at`, epoch ms).
    pub held_since_ms: Option<i64>,
    /// The main-topic offset its oldest follower waits behind (`rk-held-behind`).
    pub behind: Option<u64>,
    /// Its records that failed for the last time and hold it until resolved
    /// (`on_dead_letter = "hold_key"`), in held-topic order.
    pub dead: Vec<DeadHead>,
}

impl HoldSources {
    /// The sources of a handler's topology; `None` when it keeps no key order.
    pub fn of(topology: &Topology) -> Option<Self> {
        Some(HoldSources {
            levels: topology.retries.clone(),
            held: topology.held.clone()?,
        })
    }

    /// The sources of the handler reading `topic` as `group` whose topics are named by
    /// `naming`, as the backend has them: the retry levels that exist, in order from 1. `None`
    /// when the handler has no held topic (it keeps no key order, or has not run yet).
    pub async fn find<B: Backend>(
        backend: &B,
        topic: &str,
        group: &str,
        naming: &TopicNaming,
    ) -> Result<Option<Self>, BackendError> {
        let held = naming.held(topic, group);
        if backend
            .partitions(&Topic::new(held.as_str(), TopicRole::Held))
            .await?
            .is_none()
        {
            return Ok(None);
        }
        let mut levels = Vec::new();
        for level in 1.. {
            let name = naming.retry(topic, group, level);
            if backend
                .partitions(&Topic::new(name.as_str(), TopicRole::Retry { level }))
                .await?
                .is_none()
            {
                break;
            }
            levels.push(name);
        }
        Ok(Some(HoldSources { levels, held }))
    }

    /// Each topic with the group whose acknowledgements say what is still out, and whether
    /// its records are followers (the held topic) rather than heads (a retry level).
    pub(crate) fn topics(&self) -> impl Iterator<Item = (Topic, &str, bool)> + '_ {
        let levels = (1..).zip(&self.levels).map(|(level, name)| {
            (
                Topic::new(name.as_str(), TopicRole::Retry { level }),
                derived_group(name),
                false,
            )
        });
        levels.chain(std::iter::once((
            Topic::new(self.held.as_str(), TopicRole::Held),
            derived_group(&self.held),
            true,
        )))
    }

    /// Every key held now, by partition then key.
    pub async fn held_keys<B: Backend>(&self, backend: &B) -> Result<Vec<HeldKey>, BackendError> {
        let mut keys: BTreeMap<(u32, Bytes), HeldKey> = BTreeMap::new();
        let mut resolutions = Vec::new();
        for (topic, group, followers) in self.topics() {
            let Some(partitions) = backend.partitions(&topic).await? else {
                continue;
            };
            let all: Vec<u32> = (0..partitions).collect();
            for record in backend.unacknowledged(&topic, group, &all).await? {
                let Some(key) = record.key.clone() else {
                    // Keyless records are never held.
                    continue;
                };
                let held = keys
                    .entry((record.partition, key.clone()))
                    .or_insert_with(|| HeldKey {
                        partition: record.partition,
                        key,
                        heads: Vec::new(),
                        followers: 0,
                        held_since_ms: None,
                        behind: None,
                        dead: Vec::new(),
                    });
                match (followers, topic.role) {
                    (true, _) => match HeldRecord::of(&record.headers) {
                        HeldRecord::Follower => held.follower(&record),
                        HeldRecord::Dead { queue } => held.dead.push(DeadHead::of(&record, queue)),
                        HeldRecord::Resolution { of, how } => resolutions.push((record.partition, of, how)),
                    },
                    (false, TopicRole::Retry { level }) => held.heads.push(Head {
                        level,
                        offset: record.offset,
                        main_offset: number(&record.headers, names::ORIGINAL_OFFSET),
                    }),
                    (false, _) => {}
                }
            }
        }
        // A resolution comes after the record it resolves, and is written with its key.
        for (partition, of, how) in resolutions {
            let dead = keys
                .iter_mut()
                .filter(|((p, _), _)| *p == partition)
                .flat_map(|(_, held)| held.dead.iter_mut())
                .find(|dead| dead.offset == of);
            if let Some(dead) = dead {
                dead.resolution.get_or_insert(how);
            }
        }
        // A resolution's own record is not a hold.
        keys.retain(|_, held| !held.heads.is_empty() || held.followers > 0 || !held.dead.is_empty());
        Ok(keys.into_values().collect())
    }

    /// Resolves the dead-held record `dead` of `key` in `partition` ([`HeldKey::dead`]): writes
    /// the resolution on the held topic, where the handler's held level reads it and replays or
    /// discards the record (before any later record of its key starts). A second resolution of
    /// the same record changes nothing.
    ///
    /// ```no_run
    /// # async fn replay(backend: retry_kafka::backend::kafka::Kafka) -> Result<(), retry_kafka::error::BackendError> {
    /// use retry_kafka::app::TopicNaming;
    /// use retry_kafka::held_keys::{HoldSources, Resolution};
    ///
    /// let sources = HoldSources::find(&backend, "postings", "ledger", &TopicNaming::default())
    ///     .await?
    ///     .expect("ledger keeps each key's order");
    /// for key in sources.held_keys(&backend).await? {
    ///     for dead in &key.dead {
    ///         sources.resolve(&backend, key.partition, &key.key, dead.offset, Resolution::Replay).await?;
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn resolve<P: Publish>(
        &self,
        backend: &P,
        partition: u32,
        key: &Bytes,
        dead: u64,
        how: Resolution,
    ) -> Result<Delivered, BackendError> {
        let mut headers = Headers::with_capacity(3);
        headers.insert(names::SCHEMA, crate::headers::SCHEMA_VERSION.to_string());
        headers.insert(names::RESOLVES, dead.to_string());
        headers.insert(names::RESOLUTION, how.as_str());
        let record = OutboundRecord {
            partition: Some(partition),
            key: Some(key.clone()),
            payload: None,
            headers,
        };
        backend
            .send(&Topic::new(self.held.as_str(), TopicRole::Held), record)
            .await
    }
}

impl DeadHead {
    fn of(record: &Record, queue: TopicRole) -> Self {
        DeadHead {
            offset: record.offset,
            main_offset: number(&record.headers, names::ORIGINAL_OFFSET),
            queue,
            attempts: number(&record.headers, names::ATTEMPTS),
            replays: number(&record.headers, names::REPLAYS).unwrap_or(0),
            error_kind: record.headers.get_str(names::ERROR_KIND).map(str::to_owned),
            error_message: record.headers.get_str(names::ERROR_MESSAGE).map(str::to_owned),
            resolution: None,
        }
    }
}

impl HeldKey {
    /// One more follower; the first one read (the held topic is read in offset order) is the
    /// oldest.
    fn follower(&mut self, record: &Record) {
        self.followers += 1;
        if self.followers == 1 {
            self.held_since_ms = number(&record.headers, names::HELD_AT);
            self.behind = number(&record.headers, names::HELD_BEHIND);
        }
    }
}

fn number<T: std::str::FromStr>(headers: &Headers, name: &str) -> Option<T> {
    headers.get_str(name)?.parse().ok()
}
