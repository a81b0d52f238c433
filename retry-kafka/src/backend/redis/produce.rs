//! Writing entries: an XADD to a partition stream, a ZADD to a retry level's delay set, and a
//! hand-off's write of the next hop and acknowledgement of its source ([`Write`]; the hand-off
//! writer, `hand_offs.rs`, sends many in one pipeline): on one server in one MULTI/EXEC, on a
//! cluster (where the two are in different slots) the write once per source, then the XACK.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};
use redis::{RedisError, Value};

use super::fields::{self, Layout};
use super::keys::KeyLayout;
use super::link::Link;
use super::stream_id::StreamId;
use super::{error, scripts, Redis};
use crate::backend::{Delivered, OutboundRecord, Topic, TopicRole};
use crate::clock::now_ms;
use crate::error::BackendError;

/// How long a hand-off's mark lives on a cluster (`keys.rs`): the mark is deleted once its
/// source is acknowledged, so only a mark whose deletion was lost (a crash between the XACK and
/// the DEL) waits this long; a source redelivered later than this after a crash between the
/// write and the XACK would be handed on twice.
const HAND_OFF_MARK_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

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

    /// A write of `record` to partition `partition` of `to`: XADD, or, with a due time on a
    /// retry level, ZADD to the delay set; for a hand-off, with the XACK of its source. Built
    /// here, sent by [`Redis::write`] or, batched with others, by the hand-off writer.
    pub(crate) fn prepare(
        &self,
        to: &Topic,
        partition: u32,
        record: &OutboundRecord,
        source: Option<&Source>,
    ) -> Write {
        let topic = &*to.name;
        let keys = self.keys();
        let stream = keys.stream(topic, partition);
        let fields = fields::encode(record, Layout::of(to.role));
        // Only a retry level keeps records in a delay set, until due: one due already goes
        // straight to the stream. Elsewhere `rk-due-at` is just a header.
        let due = match to.role {
            TopicRole::Retry { .. } => record.due_at_ms().filter(|&due| due > now_ms()),
            _ => None,
        };
        let source_id = source.map(|source| format!("{}/{}/{}", source.stream, source.group, source.id));
        // On a cluster a hand-off's write and its source's XACK are in different slots: the
        // write goes once per source (its mark, in the target's slot, says it went), then the
        // XACK, then the mark is deleted (`hand_offs.rs`).
        let mark = match (keys, &source_id) {
            (KeyLayout::Cluster, Some(source_id)) => {
                let target = match due {
                    Some(_) => keys.delayed(topic, partition),
                    None => stream.clone(),
                };
                Some((keys.handed(&target, source_id), target))
            }
            _ => None,
        };
        let write = match (due, mark.as_ref()) {
            (Some(due), None) => {
                let member_id = source_id.unwrap_or_else(|| self.member_name());
                let member = fields::pack_delayed(&stream, &member_id, &fields);
                let mut add = redis::cmd("ZADD");
                add.arg(keys.delayed(topic, partition)).arg(due).arg(member);
                add
            }
            (None, None) => {
                let mut add = redis::cmd("XADD");
                add.arg(&stream).arg("*");
                for (name, value) in &fields {
                    add.arg(name.as_bytes()).arg(&value[..]);
                }
                add
            }
            (due, Some((mark, target))) => {
                let mut once = redis::cmd("EVALSHA");
                once.arg(scripts::HAND_OFF_ONCE.get_hash())
                    .arg(2)
                    .arg(mark)
                    .arg(target)
                    .arg(HAND_OFF_MARK_LIFETIME.as_millis() as u64);
                match due {
                    Some(due) => {
                        let member_id = source_id.as_deref().unwrap_or_default();
                        once.arg("z")
                            .arg(due)
                            .arg(fields::pack_delayed(&stream, member_id, &fields));
                    }
                    None => {
                        once.arg("x");
                        for (name, value) in &fields {
                            once.arg(name.as_bytes()).arg(&value[..]);
                        }
                    }
                }
                once
            }
        };
        let ack = source.map(|source| {
            let mut ack = redis::cmd("XACK");
            ack.arg(&source.stream)
                .arg(&source.group)
                .arg(source.id.to_string());
            ack
        });
        Write {
            topic: to.name.clone(),
            partition,
            delayed: due.is_some(),
            acks: ack.is_some() && mark.is_none(),
            write,
            ack,
            mark: mark.map(|(mark, _)| mark),
        }
    }

    /// XADD (or, with a due time, ZADD to the delay set), on its own; with
    /// [`wait_for_replicas`](super::RedisBuilder::wait_for_replicas), then `WAIT` on the same
    /// connection.
    pub(crate) async fn write(
        &self,
        to: &Topic,
        partition: u32,
        record: &OutboundRecord,
    ) -> Result<Delivered, BackendError> {
        let settings = &self.shared.settings;
        let mut write = self.prepare(to, partition, record, None);
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        write.add_to(&mut pipe);
        let within = settings.response_timeout / 2;
        if settings.wait_replicas > 0 {
            pipe.cmd("WAIT")
                .arg(settings.wait_replicas)
                .arg(within.as_millis() as u64);
        }
        let reply: Vec<Value> =
            query_retrying(&self.publishing_connection()?, &pipe, settings.response_timeout)
                .await
                .map_err(|error| error::produce(&write.topic, error))?;
        let mut replies = reply.into_iter();
        let delivered = write.delivered(&mut replies)?;
        if settings.wait_replicas > 0 {
            let acknowledged = match replies.next() {
                Some(Value::Int(replicas)) => replicas.max(0) as u32,
                _ => 0,
            };
            if acknowledged < settings.wait_replicas {
                return Err(BackendError::Produce {
                    topic: write.topic.to_string(),
                    source: Box::new(NotReplicated {
                        acknowledged,
                        wanted: settings.wait_replicas,
                        within,
                    }),
                });
            }
        }
        Ok(delivered)
    }
}

/// A published entry fewer replicas acknowledged than
/// [`wait_for_replicas`](super::RedisBuilder::wait_for_replicas) asks for.
#[derive(Debug, thiserror::Error)]
#[error(
    "the entry was acknowledged by {acknowledged} replica(s) within {within:?}, not the {wanted} \
     REDIS_WAIT_REPLICAS asks for; it may be on the primary only, and a failover may lose it"
)]
pub(crate) struct NotReplicated {
    acknowledged: u32,
    wanted: u32,
    within: Duration,
}

/// One write, built: the next hop, and for a hand-off the XACK of its source.
pub(crate) struct Write {
    pub(crate) topic: Arc<str>,
    partition: u32,
    /// Into a delay set: no stream ID yet.
    delayed: bool,
    write: redis::Cmd,
    ack: Option<redis::Cmd>,
    /// With the XACK of its source, in a MULTI/EXEC.
    acks: bool,
    /// On a cluster: the mark of a hand-off's write, deleted once its source is acknowledged.
    mark: Option<String>,
}

impl Write {
    /// Adds the write to `pipe`: alone, or with its XACK in a MULTI/EXEC of its own, so the
    /// source is acknowledged only together with its next hop, never in both places or in
    /// neither. [`delivered`](Write::delivered) reads its replies back.
    /// The commands move into `pipe`: add a write once.
    pub(crate) fn add_to(&mut self, pipe: &mut redis::Pipeline) {
        let write = std::mem::replace(&mut self.write, redis::Cmd::new());
        match self.ack.take_if(|_| self.acks) {
            Some(ack) => {
                pipe.cmd("MULTI").add_command(write).add_command(ack).cmd("EXEC");
            }
            None => {
                pipe.add_command(write);
            }
        }
    }

    /// On a cluster, once the write is in: adds the XACK of the hand-off's source to `pipe`;
    /// whether there was one. Adds it once.
    pub(crate) fn add_ack_to(&mut self, pipe: &mut redis::Pipeline) -> bool {
        match self.ack.take() {
            Some(ack) => {
                pipe.add_command(ack);
                true
            }
            None => false,
        }
    }

    /// On a cluster: the mark that says the hand-off's write went (`keys.rs`).
    pub(crate) fn mark(&self) -> Option<&str> {
        self.mark.as_deref()
    }

    /// The outcome, from this write's replies (taken from `replies`, in the order
    /// [`add_to`](Write::add_to) added its commands).
    pub(crate) fn delivered(
        &self,
        replies: &mut impl Iterator<Item = Value>,
    ) -> Result<Delivered, BackendError> {
        let failed = |error: RedisError| error::produce(&self.topic, error);
        let written = match self.acks {
            true => {
                // MULTI, the two commands queued, then EXEC with both replies.
                let queued: Vec<Value> = replies.take(3).collect();
                let exec = replies.next();
                if let Some(Value::ServerError(error)) =
                    queued.into_iter().find(|v| matches!(v, Value::ServerError(_)))
                {
                    return Err(failed(error.into()));
                }
                match exec {
                    Some(Value::Array(results)) => {
                        let mut results = results.into_iter();
                        let (written, acked) = (results.next(), results.next());
                        if let Some(Value::ServerError(error)) = acked {
                            return Err(failed(error.into()));
                        }
                        written
                    }
                    Some(Value::ServerError(error)) => return Err(failed(error.into())),
                    other => other,
                }
            }
            false => replies.next(),
        };
        let offset = match written {
            Some(Value::ServerError(error)) => return Err(failed(error.into())),
            _ if self.delayed => 0,
            Some(Value::BulkString(id)) => StreamId::parse(&id).map_or(0, StreamId::offset),
            Some(Value::SimpleString(id)) => StreamId::parse(id.as_bytes()).map_or(0, StreamId::offset),
            other => {
                return Err(failed(RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "no stream ID in the reply",
                    format!("{other:?}"),
                ))))
            }
        };
        Ok(Delivered {
            partition: self.partition,
            offset,
        })
    }
}

/// Runs `pipe` (built with `ignore_errors`, so a command's error is its reply), again after a
/// dropped or refused connection (a server restart, a network blip) until `timeout` has
/// passed. A write whose reply was lost may then be applied twice: at least once, as everywhere.
pub(crate) async fn query_retrying(
    conn: &Link,
    pipe: &redis::Pipeline,
    timeout: Duration,
) -> Result<Vec<Value>, RedisError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let pauses = ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(1))
        .without_max_times();
    (|| {
        let mut conn = conn.clone();
        async move { pipe.query_async(&mut conn).await }
    })
    .retry(pauses)
    .when(|error: &RedisError| {
        (error.is_io_error() || error.is_connection_dropped() || error.is_connection_refusal())
            && tokio::time::Instant::now() < deadline
    })
    .notify(|error, pause| tracing::debug!(%error, retry_in = ?pause, "redis write failed; retrying"))
    .await
}
