//! The hand-off writer: a task of its own per consumer that owns a connection and the queue of
//! hand-offs. What is queued while one round trip is under way goes out in the next, as one
//! pipelined write; each hand-off in it is its own MULTI/EXEC (the next hop and the XACK of its
//! source), so a source is acknowledged only together with its next hop, and one hand-off's
//! error stays its own. A round trip's results are reported to the consumer's
//! `HandOffReports` at once, by the runtime's ids: no oneshot or future per hand-off.

use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::error;
use super::produce::{query_retrying, Source, Write};
use super::Redis;
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
    conn: ConnectionManager,
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
        let results = send_batch(&conn, std::mem::take(&mut writes), timeout).await;
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
    }
}

/// Sends `writes` in one pipelined write (each its own MULTI/EXEC when it acknowledges a
/// source) and gives each its own result, in order. A failed round trip (after the connection's
/// retries) fails every write of it; none of their sources is acknowledged by what was not
/// applied, and a write applied whose reply was lost is written again on the runtime's retry:
/// at least once.
pub(crate) async fn send_batch(
    conn: &ConnectionManager,
    mut writes: Vec<Write>,
    timeout: Duration,
) -> Vec<Result<Delivered, BackendError>> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for write in &mut writes {
        write.add_to(&mut pipe);
    }
    match query_retrying(conn, &pipe, timeout).await {
        Ok(replies) => {
            let mut replies = replies.into_iter();
            writes.iter().map(|write| write.delivered(&mut replies)).collect()
        }
        Err(failed) => writes
            .iter()
            .map(|write| Err(error::produce(&write.topic, failed.clone())))
            .collect(),
    }
}
