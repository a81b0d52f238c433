//! What a group has not acknowledged on some partitions of a topic
//! ([`Backend::unacknowledged`](crate::backend::Backend::unacknowledged)): where a key-ordered
//! handler's holds are counted from when its main member takes those partitions.
//!
//! A retry level's entries wait in a delay set and move to their stream when due, by any
//! member's read: the set and the streams are read in one script, at one instant, so a move
//! meanwhile can neither count a retry twice (a key held for ever) nor miss it (a later record
//! of its key let through).

use redis::Value;

use super::error::transport;
use super::fields::{decode, unpack_delayed};
use super::keys::KeyLayout;
use super::reply::parse_entries;
use super::stream_id::StreamId;
use super::{scripts, Redis};
use crate::backend::{Record, Topic, TopicRole};
use crate::error::BackendError;

impl Redis {
    /// For each of `partitions` of `topic`: the entries `group` left pending, those it never
    /// read, and, on a retry level, the partition's retries waiting in the delay set (offset
    /// `u64::MAX`: no stream ID yet). Oldest first per partition.
    pub(super) async fn unsettled(
        &self,
        topic: &Topic,
        group: &str,
        partitions: &[u32],
    ) -> Result<Vec<Record>, BackendError> {
        let keys = self.keys();
        let count = self.stored_partitions(&topic.name).await?.unwrap_or(0);
        let partitions: Vec<u32> = partitions.iter().copied().filter(|&p| p < count).collect();
        let delayed = matches!(topic.role, TopicRole::Retry { .. });
        // One script per slot: a server's topic is one slot, a cluster's partition is.
        let calls: Vec<Vec<u32>> = match keys {
            KeyLayout::Server => vec![partitions.clone()],
            KeyLayout::Cluster => partitions.iter().map(|&p| vec![p]).collect(),
        };
        let mut conn = self.connection();
        let mut records = Vec::new();
        for call in calls.into_iter().filter(|call| !call.is_empty()) {
            let mut invocation = scripts::UNSETTLED.prepare_invoke();
            if delayed {
                invocation.key(keys.delayed(&topic.name, call[0]));
            }
            for &p in &call {
                invocation.key(keys.stream(&topic.name, p));
            }
            invocation.arg(group).arg(UNSETTLED_LIMIT).arg(u8::from(delayed));
            let mut pipe = redis::pipe();
            pipe.invoke_script(&invocation);
            let (reply,): (Value,) = scripts::query(&pipe, &mut conn).await.map_err(transport)?;
            let Value::Array(mut parts) = reply else {
                continue;
            };
            let waiting = match parts.is_empty() {
                true => Vec::new(),
                false => match parts.remove(0) {
                    Value::Array(members) => members,
                    _ => Vec::new(),
                },
            };
            for (&p, entries) in call.iter().zip(parts) {
                records.extend(
                    parse_entries(entries)
                        .into_iter()
                        .map(|(id, fields)| decode(p, id, fields)),
                );
                records.extend(
                    waiting
                        .iter()
                        .filter_map(|member| match member {
                            Value::BulkString(bytes) => unpack_delayed(bytes),
                            _ => None,
                        })
                        .filter(|(partition, _)| *partition == p)
                        .map(|(partition, fields)| {
                            let mut record = decode(partition, StreamId::ZERO, fields);
                            record.offset = u64::MAX;
                            record.timestamp_ms = None;
                            record
                        }),
                );
            }
        }
        Ok(records)
    }
}

/// The most pending entries read per partition: far more than a level holds back (its
/// consumers read 256 at a time by default).
const UNSETTLED_LIMIT: u64 = 10_000_000;
