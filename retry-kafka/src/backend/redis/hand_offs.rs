//! The hand-off writer: a task of its own per consumer that owns a connection and the queue of
//! hand-offs. What is queued while one round trip is under way goes out in the next, as one
//! pipelined write; each hand-off in it is its own MULTI/EXEC (the next hop and the XACK of its
//! source), so a source is acknowledged only together with its next hop, and one hand-off's
//! error stays its own. Each hand-off's future completes with its own result.
//!
//! On a cluster, a hand-off's write and its source are in different slots, so no MULTI/EXEC
//! holds both: a batch goes in rounds, the writes (each once per source: a repeated hand-off
//! of a source whose XACK was lost writes nothing again, `scripts.rs`), then the XACKs of the
//! sources written, then, after the hand-offs have completed, the deletion of their marks.
//!
//! [`send_batch`] is the batch itself (writes in, one result per write out): if the seam comes
//! to complete hand-offs in batches, it calls that, and only the queue in front goes.

use std::future::Future;
use std::time::Duration;

use redis::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::error;
use super::link::Link;
use super::produce::{query_retrying, Write};
use super::{scripts, Redis};
use crate::backend::Delivered;
use crate::error::BackendError;

/// The most hand-offs in one pipelined write: one round trip's worth at the hand-off window.
const MAX_BATCH: usize = 1024;

/// A write waiting for its round trip, and where its result goes.
struct Queued {
    write: Write,
    done: oneshot::Sender<Result<Delivered, BackendError>>,
}

/// The writer task and the way into its queue. Owned by one consumer, which closes it.
pub(crate) struct HandOffWriter {
    queue: HandOffQueue,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

/// The way into a writer's queue, for a hand-off's future to own.
#[derive(Clone)]
pub(crate) struct HandOffQueue {
    sender: mpsc::UnboundedSender<Queued>,
}

impl HandOffWriter {
    /// Starts the task, on a connection of its own.
    pub(crate) fn start(redis: &Redis) -> Result<Self, BackendError> {
        let conn = redis.writing_connection()?;
        let timeout = redis.settings().response_timeout;
        let (sender, queue) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(conn, queue, stop.clone(), timeout));
        Ok(HandOffWriter {
            queue: HandOffQueue { sender },
            stop,
            task: Some(task),
        })
    }

    pub(crate) fn queue(&self) -> HandOffQueue {
        self.queue.clone()
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

impl HandOffQueue {
    /// Queues `write`; the future completes when the round trip that carries it does.
    pub(crate) fn send(&self, write: Write) -> impl Future<Output = Result<Delivered, BackendError>> + Send {
        let (done, result) = oneshot::channel();
        let topic = write.topic.clone();
        let queued = self.sender.send(Queued { write, done }).is_ok();
        async move {
            if !queued {
                return Err(stopped(&topic));
            }
            result.await.unwrap_or_else(|_| Err(stopped(&topic)))
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
/// completes each; then sends what was queued before the stop.
async fn run(
    mut conn: Link,
    mut queue: mpsc::UnboundedReceiver<Queued>,
    stop: CancellationToken,
    timeout: Duration,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
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
        let (writes, done): (Vec<Write>, Vec<_>) = batch.drain(..).map(|q| (q.write, q.done)).unzip();
        let (results, marks) = send_batch(&conn, writes, timeout).await;
        for (done, result) in done.into_iter().zip(results) {
            let _ = done.send(result); // a future dropped meanwhile: nobody waits
        }
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
