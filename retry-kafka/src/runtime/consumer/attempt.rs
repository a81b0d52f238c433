//! What every attempt shares, one record's or a batch's: what the handler is told
//! (`Context`), what earlier hops say (`Lineage`), how it finished (`Done`, `Failure`), panics
//! and timeouts caught, and the attempts under way. How attempts start is an [`Attempts`]
//! strategy: [`OneRecord`](super::one_record::OneRecord) or
//! [`Batches`](super::batches::Batches).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::outputs::{self, OutputRoute};
use super::partitions::Partitions;
use super::Level;
use crate::backend::{Output, Record};
use crate::context::{Context, Origin};
use crate::failure::{ErrorKind, HandlerError};
use crate::headers::{self, EarlierHops};
use crate::outbox::{Emitted, Outbox};
use crate::trace::AttemptSpan;

/// How a level starts attempts. The loop asks it whether another record may start, gives it
/// records, and concludes what it finishes; it never learns which strategy it runs.
pub(super) trait Attempts: Send + 'static {
    /// What one call of the handler finishes: one record's attempt, or a batch's.
    type Finished: IntoIterator<Item = Done> + Send + 'static;

    /// Whether another record can start now.
    fn room(&self) -> bool;

    /// Starts an attempt of `record` (or gathers it into the next batch); `due` is its
    /// `rk-due-at`, read once when it was fetched. An attempt that finished without waiting is
    /// returned, to be concluded at once.
    fn start(
        &mut self,
        level: &Level,
        record: Record,
        generation: u32,
        due: Option<i64>,
    ) -> Option<Self::Finished>;

    /// Starts what was gathered, when it is time (`stopping`: now, whatever was gathered).
    /// Records of partitions revoked since are left out.
    fn launch(&mut self, level: &Level, stopping: bool, partitions: &Partitions);

    /// When [`launch`](Attempts::launch) must look again without being woken.
    fn wake_at(&self) -> Option<Instant>;

    /// Calls of the handler under way.
    fn in_flight(&self) -> usize;

    /// Nothing under way and nothing gathered.
    fn idle(&self) -> bool;

    /// The next finished call. Cancel-safe; pending forever when nothing is in flight.
    fn next(&mut self) -> impl Future<Output = Self::Finished> + Send;
}

/// Why an attempt failed.
#[derive(Clone)]
pub(super) struct Failure {
    pub(super) kind: ErrorKind,
    pub(super) message: String,
}

impl Failure {
    pub(super) fn panic(payload: &(dyn std::any::Any + Send)) -> Self {
        let text = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(non-text panic payload)");
        Failure {
            kind: ErrorKind::Panic,
            message: format!("handler panicked: {text}"),
        }
    }

    pub(super) fn transient(message: String) -> Self {
        Failure {
            kind: ErrorKind::Transient,
            message,
        }
    }

    pub(super) fn decode(error: impl std::fmt::Display) -> Self {
        Failure {
            kind: ErrorKind::Decode,
            message: error.to_string(),
        }
    }
}

/// A successful attempt's end: its outputs published (the route says by whom), or kept for
/// the consumer's transaction. A publish that fails fails the attempt (it runs again, and
/// emits again); a failed attempt's outputs are dropped unwritten.
pub(super) async fn settled(
    result: Result<(), Failure>,
    emitted: Vec<Emitted>,
    route: &OutputRoute,
) -> (Result<(), Failure>, Vec<Output>) {
    if result.is_err() || emitted.is_empty() {
        return (result, Vec::new());
    }
    match route {
        OutputRoute::Consumer => (Ok(()), outputs::outputs(emitted)),
        OutputRoute::Publish(publisher) => {
            let published = outputs::publish(&**publisher, outputs::outputs(emitted)).await;
            (published.map_err(Failure::transient), Vec::new())
        }
    }
}

impl From<HandlerError> for Failure {
    fn from(error: HandlerError) -> Self {
        Failure {
            kind: error.kind(),
            message: error.to_string(),
        }
    }
}

/// A finished attempt, with the record it was for. Kept small: it is moved a few times per
/// record on the success path (what earlier hops say is read again only for a failure).
pub(super) struct Done {
    pub(super) record: Record,
    /// The partition's incarnation when the attempt started; a revoke in between makes it stale.
    pub(super) generation: u32,
    pub(super) result: Result<(), Failure>,
    /// Its `message` span's trace context, handed on with a failure (zero-sized without
    /// the `opentelemetry` feature).
    pub(super) span: AttemptSpan,
    /// When the attempt started, for its duration.
    pub(super) started: std::time::Instant,
    /// What a successful attempt emitted, for the consumer's transaction (empty otherwise:
    /// the attempt published them itself, or emitted nothing).
    pub(super) outputs: Vec<Output>,
}

/// What the message's earlier hops say about it; trusted only on retry levels.
pub(super) struct Lineage {
    pub(super) origin: Origin,
    pub(super) first_failure_ms: Option<i64>,
    pub(super) replays: Option<u32>,
}

/// A call of the handler under way.
pub(super) type AttemptFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Calls under way. One at a time runs inline in the consumer's task (no spawn per message);
/// `concurrency > 1` spawns each into a set this consumer owns (dropped, so aborted, with it).
pub(super) enum InFlight<T> {
    Inline(Option<AttemptFuture<T>>),
    Spawned(JoinSet<T>),
}

impl<T: Send + 'static> InFlight<T> {
    pub(super) fn new(concurrency: usize) -> Self {
        if concurrency <= 1 {
            InFlight::Inline(None)
        } else {
            InFlight::Spawned(JoinSet::new())
        }
    }

    pub(super) fn is_inline(&self) -> bool {
        matches!(self, InFlight::Inline(_))
    }

    pub(super) fn len(&self) -> usize {
        match self {
            InFlight::Inline(slot) => slot.is_some() as usize,
            InFlight::Spawned(set) => set.len(),
        }
    }

    pub(super) fn push(&mut self, attempt: AttemptFuture<T>) {
        match self {
            InFlight::Inline(slot) => *slot = Some(attempt),
            InFlight::Spawned(set) => {
                set.spawn(attempt);
            }
        }
    }

    /// The next finished call. Cancel-safe; pending forever when nothing is in flight.
    pub(super) async fn next(&mut self) -> T {
        match self {
            InFlight::Inline(slot) => match slot.as_mut() {
                Some(attempt) => {
                    let done = attempt.await;
                    *slot = None;
                    done
                }
                None => std::future::pending().await,
            },
            InFlight::Spawned(set) => loop {
                match set.join_next().await {
                    Some(Ok(done)) => return done,
                    // Attempts catch their own panics, so a join error is an abort on drop.
                    Some(Err(_)) => continue,
                    None => std::future::pending::<()>().await,
                }
            },
        }
    }
}

/// Runs a handler's future (one record's or a batch's) catching a panic and enforcing the
/// `timeout`: either is a failure of the whole call.
pub(super) async fn guarded<F: Future>(handler: F, timeout: Option<Duration>) -> Result<F::Output, Failure> {
    let guarded = AssertUnwindSafe(handler).catch_unwind();
    let outcome = match timeout {
        Some(limit) => match tokio::time::timeout(limit, guarded).await {
            Ok(outcome) => outcome,
            Err(_) => {
                return Err(Failure {
                    kind: ErrorKind::Timeout,
                    message: format!("attempt timed out after {limit:?}"),
                })
            }
        },
        None => guarded.await,
    };
    outcome.map_err(|panic| Failure::panic(&*panic))
}

impl Level {
    /// On a retry level, when the message is due (`rk-due-at`); `None` on the main topic,
    /// whose `rk-*` headers are not trusted.
    pub(super) fn due_at(&self, record: &Record) -> Option<i64> {
        if self.level == 0 {
            return None;
        }
        headers::due_at_ms(&record.headers)
    }

    /// What the handler is told about `record`; what it emits goes into `outbox`.
    pub(super) fn context(&self, record: &Record, outbox: Outbox) -> Context {
        let Lineage {
            origin,
            first_failure_ms,
            replays,
        } = self.lineage(record);
        Context {
            attempt: self.level + 1,
            max_attempts: self.policy.max_attempts(),
            group: self.spec.group(),
            topic: self.topic.clone(),
            partition: record.partition,
            offset: record.offset,
            origin,
            first_failure_ms,
            replays: replays.unwrap_or(0),
            headers: record.headers.clone(),
            outbox,
        }
    }

    /// What `record`'s earlier hops say about it: read for its `Context`, and again only if
    /// its attempt fails (a pure function of the level and the record's headers).
    pub(super) fn lineage(&self, record: &Record) -> Lineage {
        let replays = headers::replays(&record.headers);
        // On the main topic rk-* headers may be forged or left over from a replay: counting
        // starts here. Only rk-replays carries forward. (The held topic is written by the
        // runtime alone: its records say where they came from, as a retry level's do.)
        if self.level == 0 && !self.held {
            return Lineage {
                origin: Origin {
                    topic: self.main_topic.clone(),
                    partition: record.partition,
                    offset: record.offset,
                    timestamp_ms: record.timestamp_ms,
                },
                first_failure_ms: None,
                replays,
            };
        }
        let earlier = EarlierHops::read(&record.headers);
        let origin = match earlier.original_topic {
            Some(topic) => Origin {
                topic: if *topic == *self.main_topic {
                    self.main_topic.clone()
                } else {
                    topic.into()
                },
                partition: earlier.original_partition.unwrap_or(record.partition),
                offset: earlier.original_offset.unwrap_or(record.offset),
                timestamp_ms: earlier.original_timestamp_ms,
            },
            None => Origin {
                topic: self.main_topic.clone(),
                partition: record.partition,
                offset: record.offset,
                timestamp_ms: record.timestamp_ms,
            },
        };
        Lineage {
            origin,
            first_failure_ms: earlier.first_failure_at_ms,
            replays,
        }
    }
}
