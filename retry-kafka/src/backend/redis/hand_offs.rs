//! The hand-off writer: a task of its own per consumer that owns a connection and the queue of
//! hand-offs. What is queued while one round trip is under way goes out in the next, as one
//! pipelined write; each hand-off in it is its own MULTI/EXEC (the next hop and the XACK of its
//! source), so a source is acknowledged only together with its next hop, and one hand-off's
//! error stays its own. A round trip's results are reported to the consumer's
//! `HandOffReports` at once, by the runtime's ids: no oneshot or future per hand-off.
//!
//! On a cluster, a hand-off's write and its source are in different slots, so no MULTI/EXEC
//! holds both: a batch goes in rounds, the writes (each once per source: a repeated hand-off
//! of a source whose XACK was lost writes nothing again, `scripts.rs`), then the XACKs of the
//! sources written, then, after the hand-offs have been reported, the deletion of their marks.

use std::time::Duration;

use redis::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::error;
use super::link::Link;
use super::produce::{query_retrying, Source, Write};
use super::{scripts, Redis};
use crate::backend::{Delivered, HandOffId, HandOffReports, HandedOff, OutboundRecord, Topic, Undelivered};
use crate::error::BackendError;

/// The most hand-offs in one pipelined write: one round trip's worth at the hand-off window.
const MAX_BATCH: usize = 1024;

/// A hand-off waiting for its round trip: its id, where it goes, its record (given back if the
/// write fails) and the entry it acknowledges.
struct Queued {
    id: HandOffId,
    to: Topic,
    record: OutboundRecord,
    source: Option<Source>,
}

/// The writer task and the way into its queue. Owned by one consumer, which closes it.
pub(crate) struct HandOffWriter {
    queue: mpsc::UnboundedSender<Queued>,
    reports: HandOffReports,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl HandOffWriter {
    /// Starts the task, on a connection of its own.
    pub(crate) fn start(redis: &Redis) -> Result<Self, BackendError> {
        let conn = redis.writing_connection()?;
        let (queue, received) = mpsc::unbounded_channel();
        let reports = HandOffReports::new();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(redis.clone(), conn, received, stop.clone(), reports.clone()));
        Ok(HandOffWriter {
            queue,
            reports,
            stop,
            task: Some(task),
        })
    }

    /// Where the results are reported, by id.
    pub(crate) fn reports(&self) -> &HandOffReports {
        &self.reports
    }

    /// Queues a hand-off for the next round trip; its result is reported as `id`.
    pub(crate) fn hand_off(&self, id: HandOffId, to: Topic, record: OutboundRecord, source: Option<Source>) {
        let queued = Queued {
            id,
            to,
            record,
            source,
        };
        if let Err(mpsc::error::SendError(Queued { id, to, record, .. })) = self.queue.send(queued) {
            self.reports
                .report(id, Err(Undelivered::new(stopped(&to.name), record)));
        }
    }

    /// Sends what is queued already, then ends the task. A hand-off queued after this fails
    /// (nothing is acknowledged for it).
    pub(crate) async fn close(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for HandOffWriter {
    fn drop(&mut self) {
        // Not closed: what is queued fails; nothing of it was acknowledged.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn stopped(topic: &str) -> BackendError {
    BackendError::Produce {
        topic: topic.to_owned(),
        source: "the consumer's hand-off writer stopped before the write was sent".into(),
    }
}

/// Until stopped: takes everything queued (at most [`MAX_BATCH`]), sends it in one round trip,
/// reports the batch's results at once; then sends what was queued before the stop.
async fn run(
    redis: Redis,
    mut conn: Link,
    mut queue: mpsc::UnboundedReceiver<Queued>,
    stop: CancellationToken,
    reports: HandOffReports,
) {
    let timeout = redis.settings().response_timeout;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let (mut writes, mut records, mut finished) = (Vec::new(), Vec::new(), Vec::new());
    let mut stopping = false;
    loop {
        let received = tokio::select! {
            received = queue.recv_many(&mut batch, MAX_BATCH) => received,
            _ = stop.cancelled(), if !stopping => {
                stopping = true;
                queue.close();
                continue;
            }
        };
        if received == 0 {
            return; // closed and empty
        }
        for Queued {
            id,
            to,
            record,
            source,
        } in batch.drain(..)
        {
            // In queue order: hand-offs to one partition are written in the order started.
            match redis.pick_partition(&to.name, &record).await {
                Ok(target) => {
                    writes.push(redis.prepare(&to, target, &record, source.as_ref()));
                    records.push((id, record));
                }
                Err(error) => finished.push(HandedOff {
                    id,
                    result: Err(Undelivered::new(error, record)),
                }),
            }
        }
        let (results, marks) = send_batch(&conn, std::mem::take(&mut writes), timeout).await;
        finished.extend(
            records
                .drain(..)
                .zip(results)
                .map(|((id, record), result)| HandedOff {
                    id,
                    result: result.map_err(|error| Undelivered::new(error, record)),
                }),
        );
        reports.report_all(finished.drain(..));
        if !marks.is_empty() {
            // A mark whose deletion fails expires on its own (`produce.rs`).
            let mut forget = redis::pipe();
            for mark in marks {
                forget.cmd("DEL").arg(mark).ignore();
            }
            let _: Result<(), _> = forget.query_async(&mut conn).await;
        }
    }
}

/// Sends `writes` in one pipelined write (each its own MULTI/EXEC when it acknowledges a
/// source) and gives each its own result, in order. A failed round trip (after the connection's
/// retries) fails every write of it; none of their sources is acknowledged by what was not
/// applied, and a write applied whose reply was lost is written again on the runtime's retry:
/// at least once.
///
/// On a cluster, the writes' XACKs follow in a second round trip, and the marks of the
/// hand-offs acknowledged are returned, to be deleted once the hand-offs have completed.
pub(crate) async fn send_batch(
    conn: &Link,
    mut writes: Vec<Write>,
    timeout: Duration,
) -> (Vec<Result<Delivered, BackendError>>, Vec<String>) {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for write in &mut writes {
        write.add_to(&mut pipe);
    }
    let mut scripts_lost = false;
    let mut results: Vec<Result<Delivered, BackendError>> = match query_retrying(conn, &pipe, timeout).await {
        Ok(replies) => {
            scripts_lost = replies
                .iter()
                .any(|reply| matches!(reply, Value::ServerError(error) if error.code() == "NOSCRIPT"));
            let mut replies = replies.into_iter();
            writes.iter().map(|write| write.delivered(&mut replies)).collect()
        }
        Err(failed) => writes
            .iter()
            .map(|write| Err(error::produce(&write.topic, failed.clone())))
            .collect(),
    };
    if !conn.is_cluster() {
        return (results, Vec::new());
    }
    if scripts_lost {
        // A shard that failed over or restarted lost the scripts: load them for the runtime's
        // next try of these hand-offs.
        let _ = scripts::load(&mut conn.clone()).await;
    }
    let mut acks = redis::pipe();
    acks.ignore_errors();
    let acking: Vec<usize> = (0..writes.len())
        .filter(|&at| results[at].is_ok() && writes[at].add_ack_to(&mut acks))
        .collect();
    if acking.is_empty() {
        return (results, Vec::new());
    }
    let mut marks = Vec::with_capacity(acking.len());
    match query_retrying(conn, &acks, timeout).await {
        Ok(replies) => {
            for (&at, reply) in acking.iter().zip(replies) {
                match reply {
                    Value::ServerError(refused) => {
                        results[at] = Err(error::produce(&writes[at].topic, refused.into()));
                    }
                    _ => marks.extend(writes[at].mark().map(str::to_owned)),
                }
            }
        }
        Err(failed) => {
            for &at in &acking {
                results[at] = Err(error::produce(&writes[at].topic, failed.clone()));
            }
        }
    }
    (results, marks)
}
