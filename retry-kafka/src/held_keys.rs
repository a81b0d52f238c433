//! What a key-ordered handler (`ordering = "key"`) holds, read back from the backend: for each
//! key of each partition with a record out on a retry level (its *heads*) or waiting on the
//! held topic (its *followers*), where they are.
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

use crate::backend::{Backend, Record, Topic, TopicRole};
use crate::error::BackendError;
use crate::headers::{names, Headers};
use crate::policy::{TopicNaming, Topology};

/// Where a key-ordered handler's holds are read from: its retry levels and its held topic,
/// each read as far as the consumer group that consumes it has acknowledged (a level's group
/// and the held topic's are named after the topic).
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
                name.as_str(),
                false,
            )
        });
        levels.chain(std::iter::once((
            Topic::new(self.held.as_str(), TopicRole::Held),
            self.held.as_str(),
            true,
        )))
    }

    /// Every key held now, by partition then key.
    pub async fn held_keys<B: Backend>(&self, backend: &B) -> Result<Vec<HeldKey>, BackendError> {
        let mut keys: BTreeMap<(u32, Bytes), HeldKey> = BTreeMap::new();
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
                    });
                match (followers, topic.role) {
                    (true, _) => held.follower(&record),
                    (false, TopicRole::Retry { level }) => held.heads.push(Head {
                        level,
                        offset: record.offset,
                        main_offset: number(&record.headers, names::ORIGINAL_OFFSET),
                    }),
                    (false, _) => {}
                }
            }
        }
        Ok(keys.into_values().collect())
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
