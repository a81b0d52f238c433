//! The hand-off writer: a task of its own per consumer that owns a connection and the queue of
//! hand-offs. What is queued while one round trip is under way goes out in the next, as one
//! pipelined write; each hand-off in it is its own MULTI/EXEC (the next hop and the XACK of its
//! source), so a source is acknowledged only together with its next hop, and one hand-off's
//! error stays its own. Each hand-off's future completes with its own result.
//!
//! [`send_batch`] is the batch itself (writes in, one result per write out): if the seam comes
//! to complete hand-offs in batches, it calls that, and only the queue in front goes.

use std::future::Future;
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::error;
use super::produce::{query_retrying, Write};
use super::Redis;
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
    conn: ConnectionManager,
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
        let results = send_batch(&conn, writes, timeout).await;
        for (done, result) in done.into_iter().zip(results) {
            let _ = done.send(result); // a future dropped meanwhile: nobody waits
        }
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
