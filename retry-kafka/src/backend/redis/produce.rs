//! Writing entries: an XADD to a partition stream, a ZADD to a retry level's delay set, and a
//! hand-off's write of the next hop and acknowledgement of its source in one MULTI/EXEC.

use std::sync::atomic::Ordering;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};
use redis::RedisError;

use super::stream_id::StreamId;
use super::{error, fields, keys, Redis};
use crate::backend::{Delivered, OutboundRecord, Topic, TopicRole};
use crate::clock::now_ms;
use crate::error::BackendError;

/// The entry a hand-off acknowledges: its stream, group and ID.
pub(crate) struct Source {
    pub(crate) stream: String,
    pub(crate) group: String,
    pub(crate) id: StreamId,
}

impl Redis {
    pub(crate) async fn pick_partition(
        &self,
        topic: &str,
        record: &OutboundRecord,
    ) -> Result<u32, BackendError> {
        self.admitted().await?;
        let count = self.partition_count(topic).await?;
        Ok(match (record.partition, &record.key) {
            (Some(p), _) if p < count => p,
            (Some(p), _) => {
                return Err(BackendError::Produce {
                    topic: topic.to_owned(),
                    source: format!("partition {p} does not exist (the topic has {count})").into(),
                })
            }
            (None, Some(key)) => crate::partitioner::partition_for_key(key, count),
            (None, None) => (self.shared.next_member.fetch_add(1, Ordering::Relaxed) % count as u64) as u32,
        })
    }

    /// XADD (or, with a due time, ZADD to the delay set) and, for a hand-off, XACK the source
    /// in the same MULTI/EXEC: the entry is never in both places or in neither. No script: the
    /// delay set's member is packed here, so the server only stores it (a Lua hand-off cost
    /// the server ~53 µs each, capping a level at ~19k hand-offs/s; ZADD + XACK cost ~10).
    pub(crate) async fn write(
        &self,
        to: &Topic,
        partition: u32,
        record: &OutboundRecord,
        source: Option<Source>,
    ) -> Result<Delivered, BackendError> {
        let topic = &*to.name;
        let stream = keys::stream(topic, partition);
        let fields = fields::encode(record);
        let mut pipe = redis::pipe();
        if source.is_some() {
            pipe.atomic();
        }
        // Only a retry level keeps records in a delay set, until due: one due already goes
        // straight to the stream. Elsewhere `rk-due-at` is just a header.
        let due = match to.role {
            TopicRole::Retry { .. } => record.due_at_ms().filter(|&due| due > now_ms()),
            _ => None,
        };
        let delayed = due.is_some();
        match due {
            Some(due) => {
                let member_id = match &source {
                    Some(source) => format!("{}/{}/{}", source.stream, source.group, source.id),
                    None => self.member_name(),
                };
                let member = fields::pack_delayed(&stream, &member_id, &fields);
                pipe.cmd("ZADD")
                    .arg(keys::delayed(topic))
                    .arg(due)
                    .arg(member)
                    .ignore();
            }
            None => {
                let add = pipe.cmd("XADD");
                add.arg(&stream).arg("*");
                for (name, value) in &fields {
                    add.arg(name.as_bytes()).arg(*value);
                }
            }
        }
        if let Some(source) = &source {
            pipe.cmd("XACK")
                .arg(&source.stream)
                .arg(&source.group)
                .arg(source.id.to_string())
                .ignore();
        }
        let failed = |error: RedisError| error::produce(topic, error);
        let offset = if delayed {
            let () = self.query_retrying(&pipe).await.map_err(failed)?;
            0
        } else {
            let (id,): (String,) = self.query_retrying(&pipe).await.map_err(failed)?;
            StreamId::parse(id.as_bytes()).map_or(0, StreamId::offset)
        };
        Ok(Delivered { partition, offset })
    }

    /// Runs `cmd`, again after a dropped or refused connection (a server restart, a network
    /// blip) until the response timeout has passed. A write whose reply was lost may then be
    /// applied twice: at least once, as everywhere.
    async fn query_retrying<T: redis::FromRedisValue>(&self, cmd: &redis::Pipeline) -> Result<T, RedisError> {
        let conn = self.connection();
        let deadline = tokio::time::Instant::now() + self.shared.settings.response_timeout;
        let pauses = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(1))
            .without_max_times();
        (|| {
            let mut conn = conn.clone();
            async move { cmd.query_async(&mut conn).await }
        })
        .retry(pauses)
        .when(|error: &RedisError| {
            (error.is_io_error() || error.is_connection_dropped() || error.is_connection_refusal())
                && tokio::time::Instant::now() < deadline
        })
        .notify(|error, pause| tracing::debug!(%error, retry_in = ?pause, "redis write failed; retrying"))
        .await
    }
}
