//! One consumer per handler and level: fetch, wait for due time, run the handler, hand failures
//! on, acknowledge. Every backend runs this same loop; it is where the delivery contract lives.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use super::Shutdown;
use crate::backend::{Backend, Consumer, Fetched, OutboundRecord, Record};
use crate::error::{BackendError, Error};
use crate::handler::{Context, ErrorKind, HandlerSpec, Origin};
use crate::headers::{names, parse_number, FailureContext};
use crate::policy::{instant_at, now_ms, RetryPolicy, Step, Topology};
use crate::stats::Counters;

/// First and longest pause between attempts to hand a failed message on.
const HAND_OFF_BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(5));
/// Pause after a fetch error before fetching again.
const FETCH_BACKOFF: Duration = Duration::from_millis(200);

/// Everything one level's consumer needs; shared by the levels of a handler.
pub(crate) struct Level<B: Backend> {
    pub(crate) backend: B,
    pub(crate) spec: &'static HandlerSpec,
    pub(crate) policy: Arc<RetryPolicy>,
    pub(crate) topology: Arc<Topology>,
    pub(crate) counters: Arc<Counters>,
    /// 0 for the main topic, `n` for retry level `n`.
    pub(crate) level: u32,
    /// The topic this level reads, shared with every `Context` it builds.
    pub(crate) topic: Arc<str>,
    pub(crate) main_topic: Arc<str>,
    pub(crate) shutdown: Shutdown,
}

/// Why an attempt failed.
struct Failure {
    kind: ErrorKind,
    message: String,
}

/// A finished attempt, with the record it was for.
struct Done {
    record: Record,
    lineage: Lineage,
    result: Result<(), Failure>,
}

type AttemptFuture = Pin<Box<dyn Future<Output = Done> + Send>>;

/// What the message's earlier hops say about it; trusted only on retry levels.
#[derive(Clone)]
struct Lineage {
    origin: Origin,
    first_failure_ms: Option<i64>,
    replays: Option<u32>,
}

/// Attempts under way. One at a time runs inline in the consumer's task (no spawn per
/// message); `concurrency > 1` spawns each attempt into a set this consumer owns.
enum InFlight {
    Inline(Option<AttemptFuture>),
    Spawned(JoinSet<Done>),
}

impl InFlight {
    fn len(&self) -> usize {
        match self {
            InFlight::Inline(slot) => slot.is_some() as usize,
            InFlight::Spawned(set) => set.len(),
        }
    }

    fn push(&mut self, attempt: AttemptFuture) {
        match self {
            InFlight::Inline(slot) => *slot = Some(attempt),
            InFlight::Spawned(set) => {
                set.spawn(attempt);
            }
        }
    }

    /// The next finished attempt. Cancel-safe; pending forever when nothing is in flight.
    async fn next(&mut self) -> Done {
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

/// Per partition: offsets in flight and finished ones not yet acknowledged, so only a
/// contiguous prefix of finished work is acknowledged when attempts finish out of order.
/// Offsets are mostly dispatched in increasing order, so `in_flight` is a sorted queue whose
/// capacity is reused: the common case allocates nothing per message.
#[derive(Default)]
struct Progress {
    in_flight: VecDeque<u64>,
    finished: BTreeSet<u64>,
}

impl Progress {
    fn start(&mut self, offset: u64) {
        // Partitions arrive in offset order, except where a backend hands this member entries
        // another member left behind (Redis, unordered): keep the queue sorted either way.
        match self.in_flight.back() {
            Some(&last) if last > offset => {
                let at = self.in_flight.partition_point(|&o| o < offset);
                self.in_flight.insert(at, offset);
            }
            _ => self.in_flight.push_back(offset),
        }
    }

    /// Marks `offset` finished; returns the offset up to which everything is now done, if that
    /// moved: the highest finished offset below every offset still in flight.
    fn finish(&mut self, offset: u64) -> Option<u64> {
        if let Some(index) = self.in_flight.iter().position(|&o| o == offset) {
            self.in_flight.remove(index);
        }
        let below = self.in_flight.front().copied().unwrap_or(u64::MAX);
        if self.finished.is_empty() && offset < below {
            return Some(offset);
        }
        self.finished.insert(offset);
        let upto = self.finished.range(..below).next_back().copied()?;
        self.finished = self.finished.split_off(&(upto + 1));
        Some(upto)
    }
}

impl<B: Backend> Level<B> {
    pub(crate) async fn run(self, mut consumer: B::Consumer) -> Result<(), Error> {
        let concurrency = self.spec.concurrency().max(1) as usize;
        let mut in_flight = if concurrency == 1 {
            InFlight::Inline(None)
        } else {
            InFlight::Spawned(JoinSet::new())
        };
        let mut progress: HashMap<u32, Progress> = HashMap::new();
        // Held partitions and when their head message is due.
        let mut held: HashMap<u32, i64> = HashMap::new();
        let mut stopping = false;
        // Registered once, not once per message.
        let requested = self.shutdown.requested();
        tokio::pin!(requested);

        loop {
            let next_due = held.values().min().map(|&due| instant_at(due));
            let drain_deadline = self.shutdown.deadline();
            // A plain load each round: the request is seen even while messages keep coming,
            // and the waiting future below is polled only when there is nothing else to do.
            if !stopping && drain_deadline.is_some() {
                stopping = true;
                tracing::debug!(topic = %self.topic, group = self.spec.group(), in_flight = in_flight.len(), "stopping");
            }
            if stopping && in_flight.len() == 0 {
                break;
            }
            tokio::select! {
                biased;
                done = in_flight.next(), if in_flight.len() > 0 => {
                    if !self.conclude(done, &mut consumer, &mut progress).await {
                        break;
                    }
                }
                _ = sleep_until_opt(next_due), if next_due.is_some() && !stopping => {
                    let now = now_ms();
                    held.retain(|&partition, &mut due| {
                        let waiting = due > now;
                        if !waiting {
                            consumer.resume(partition);
                        }
                        waiting
                    });
                }
                fetched = consumer.next(), if !stopping && in_flight.len() < concurrency => match fetched {
                    Ok(Fetched::Record(record)) => {
                        if let Some(due) = self.due_at(&record) {
                            // Not due yet: hold the partition at this offset and go on with others.
                            consumer.hold(record.partition, record.offset);
                            held.insert(record.partition, due);
                            continue;
                        }
                        progress.entry(record.partition).or_default().start(record.offset);
                        let mut attempt = self.attempt(record);
                        // One at a time, an attempt that finishes without waiting (a handler that
                        // never awaits) is concluded here, not in another round of the loop.
                        if let InFlight::Inline(_) = in_flight {
                            if let Some(done) = (&mut attempt).now_or_never() {
                                if !self.conclude(done, &mut consumer, &mut progress).await {
                                    break;
                                }
                                continue;
                            }
                        }
                        in_flight.push(attempt);
                    }
                    Ok(Fetched::Assigned(partitions)) => {
                        tracing::debug!(topic = %self.topic, group = self.spec.group(), ?partitions, "assigned");
                    }
                    Ok(Fetched::Revoked(partitions)) => {
                        tracing::debug!(topic = %self.topic, group = self.spec.group(), ?partitions, "revoked");
                        for partition in partitions {
                            held.remove(&partition);
                            progress.remove(&partition);
                        }
                    }
                    Err(error @ BackendError::ConsumerStopped { .. }) => return Err(error.into()),
                    Err(error) => {
                        tracing::warn!(topic = %self.topic, group = self.spec.group(), %error, "fetch failed; retrying");
                        tokio::time::sleep(FETCH_BACKOFF).await;
                    }
                },
                _ = sleep_until_opt(drain_deadline), if stopping && drain_deadline.is_some() => {
                    tracing::warn!(topic = %self.topic, group = self.spec.group(), in_flight = in_flight.len(),
                        "shutdown deadline reached; unfinished messages stay unacknowledged");
                    break;
                }
                // Wakes an idle consumer; the check above does the rest.
                _ = &mut requested, if !stopping => {}
            }
        }
        // Dropping what is still in flight cancels it (and aborts spawned attempts) before the
        // consumer commits, so nothing unfinished is acknowledged.
        drop(in_flight);
        consumer.close().await.map_err(Error::from)
    }

    /// On a retry level, the due time of a message that must wait longer.
    fn due_at(&self, record: &Record) -> Option<i64> {
        if self.level == 0 {
            return None;
        }
        let due: i64 = parse_number(&record.headers, names::DUE_AT)?;
        (due > now_ms()).then_some(due)
    }

    fn lineage(&self, record: &Record) -> Lineage {
        let headers = &record.headers;
        let replays = parse_number(headers, names::REPLAYS);
        // On the main topic rk-* headers may be forged or left over from a replay: counting
        // starts here. Only rk-replays carries forward.
        let from_headers = self.level > 0;
        let origin_topic = from_headers
            .then(|| headers.get_str(names::ORIGINAL_TOPIC))
            .flatten();
        let origin = match (origin_topic, from_headers) {
            (Some(topic), true) => Origin {
                topic: if *topic == *self.main_topic {
                    self.main_topic.clone()
                } else {
                    topic.into()
                },
                partition: parse_number(headers, names::ORIGINAL_PARTITION).unwrap_or(record.partition),
                offset: parse_number(headers, names::ORIGINAL_OFFSET).unwrap_or(record.offset),
                timestamp_ms: parse_number(headers, names::ORIGINAL_TIMESTAMP),
            },
            _ => Origin {
                topic: self.main_topic.clone(),
                partition: record.partition,
                offset: record.offset,
                timestamp_ms: record.timestamp_ms,
            },
        };
        let first_failure_ms = if from_headers {
            parse_number(headers, names::FIRST_FAILURE_AT)
        } else {
            None
        };
        Lineage {
            origin,
            first_failure_ms,
            replays,
        }
    }

    fn attempt(&self, record: Record) -> AttemptFuture {
        let lineage = self.lineage(&record);
        let context = Context {
            attempt: self.level + 1,
            max_attempts: self.policy.max_attempts(),
            group: self.spec.group(),
            topic: self.topic.clone(),
            partition: record.partition,
            offset: record.offset,
            origin: lineage.origin.clone(),
            first_failure_ms: lineage.first_failure_ms,
            replays: lineage.replays.unwrap_or(0),
            headers: record.headers.clone(),
        };
        let span = tracing::info_span!(
            "message",
            topic = %self.topic,
            partition = record.partition,
            offset = record.offset,
            group = self.spec.group(),
            attempt = self.level + 1,
        );
        let payload = record.payload.as_deref().unwrap_or_default();
        let call = self.spec.call;
        let started = std::panic::catch_unwind(AssertUnwindSafe(|| call(payload, context)));
        let timeout = self.spec.timeout();
        Box::pin(
            async move {
                let result = match started {
                    Err(panic) => Err(Failure {
                        kind: ErrorKind::Panic,
                        message: panic_message(&*panic),
                    }),
                    Ok(Err(decode)) => Err(Failure {
                        kind: ErrorKind::Decode,
                        message: decode.to_string(),
                    }),
                    Ok(Ok(handler)) => run_guarded(handler, timeout).await,
                };
                Done {
                    record,
                    lineage,
                    result,
                }
            }
            .instrument(span),
        )
    }

    /// Settles a finished attempt and acknowledges what that completes. Returns false when
    /// shutdown cut a hand-off short: the message stays unacknowledged and the loop ends.
    async fn conclude(
        &self,
        done: Done,
        consumer: &mut B::Consumer,
        progress: &mut HashMap<u32, Progress>,
    ) -> bool {
        let (partition, offset) = (done.record.partition, done.record.offset);
        if !self.settle(done, consumer).await {
            return false;
        }
        let upto = progress.get_mut(&partition).and_then(|p| p.finish(offset));
        if let Some(upto) = upto {
            if let Err(error) = consumer.ack(partition, upto).await {
                tracing::warn!(topic = %self.topic, partition, offset = upto, %error, "acknowledge failed; the message may be redelivered");
            }
        }
        true
    }

    /// Acts on a finished attempt. Returns false when shutdown cut a hand-off short, in which
    /// case the message must not be acknowledged.
    async fn settle(&self, done: Done, consumer: &mut B::Consumer) -> bool {
        let Done {
            record,
            lineage,
            result,
        } = done;
        let failure = match result {
            Ok(()) => {
                self.counters.succeeded();
                return true;
            }
            Err(failure) => failure,
        };
        self.counters.failed();
        let now = now_ms();
        let step = self.policy.next(self.level, failure.kind);
        tracing::warn!(
            topic = %self.topic, partition = record.partition, offset = record.offset,
            group = self.spec.group(), attempt = self.level + 1, kind = %failure.kind,
            error = %failure.message, next = ?step, "attempt failed",
        );
        let (topic, due_at_ms) = match step {
            Step::Retry { level, delay } => {
                (self.topology.level(level), Some(now + delay.as_millis() as i64))
            }
            Step::DeadLetter => (
                self.topology
                    .dead_letter
                    .as_deref()
                    .expect("a dead-letter policy has a dead-letter topic"),
                None,
            ),
            Step::Drop => {
                tracing::error!(
                    topic = %self.topic, partition = record.partition, offset = record.offset,
                    group = self.spec.group(), kind = %failure.kind, error = %failure.message,
                    "message dropped after its last attempt (on_exhausted = \"drop\")",
                );
                self.counters.dropped();
                return true;
            }
        };
        let context = FailureContext {
            original_topic: lineage.origin.topic.to_string(),
            original_partition: lineage.origin.partition,
            original_offset: lineage.origin.offset,
            original_timestamp_ms: lineage.origin.timestamp_ms,
            group: self.spec.group().to_owned(),
            attempts: self.level + 1,
            due_at_ms,
            first_failure_at_ms: lineage.first_failure_ms.unwrap_or(now),
            last_failure_at_ms: now,
            error_kind: failure.kind,
            error_message: failure.message,
            replays: lineage.replays,
        };
        let mut headers = record.headers;
        context.write_to(&mut headers);
        let outbound = OutboundRecord {
            partition: Some(record.partition),
            key: record.key,
            payload: record.payload,
            headers,
            not_before_ms: due_at_ms,
        };
        if !self
            .hand_off(consumer, (record.partition, record.offset), topic, outbound)
            .await
        {
            return false;
        }
        match step {
            Step::Retry { level, .. } => self.counters.retried(level),
            _ => self.counters.dead_lettered(),
        }
        true
    }

    /// Produces to the next level or the dead-letter queue until the broker acknowledges it.
    /// The partition waits meanwhile; nothing is skipped. Gives up only when shutdown's
    /// deadline passes.
    async fn hand_off(
        &self,
        consumer: &mut B::Consumer,
        (partition, offset): (u32, u64),
        topic: &str,
        record: OutboundRecord,
    ) -> bool {
        let mut backoff = HAND_OFF_BACKOFF.0;
        loop {
            let sent = self
                .backend
                .hand_off(consumer, partition, offset, topic, record.clone())
                .await;
            match sent {
                Ok(_) => return true,
                Err(error) => {
                    tracing::warn!(%topic, %error, retry_in = ?backoff, "hand-off failed; retrying");
                }
            }
            let wake = Instant::now() + backoff;
            match self.shutdown.deadline() {
                Some(deadline) if deadline <= wake => {
                    tokio::time::sleep_until(deadline).await;
                    tracing::warn!(%topic, "shutdown deadline reached during hand-off; the message stays unacknowledged");
                    return false;
                }
                _ => tokio::time::sleep_until(wake).await,
            }
            backoff = (backoff * 2).min(HAND_OFF_BACKOFF.1);
        }
    }
}

async fn run_guarded(
    handler: crate::handler::HandlerFuture,
    timeout: Option<Duration>,
) -> Result<(), Failure> {
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
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(Failure {
            kind: error.kind(),
            message: error.to_string(),
        }),
        Err(panic) => Err(Failure {
            kind: ErrorKind::Panic,
            message: panic_message(&*panic),
        }),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(non-text panic payload)");
    format!("handler panicked: {text}")
}

/// Sleeps until `at`, or forever: a `select!` branch that is off while there is no deadline.
pub(crate) async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::Progress;

    #[test]
    fn acknowledges_only_contiguous_prefix() {
        let mut progress = Progress::default();
        [10, 11, 12].into_iter().for_each(|o| progress.start(o));
        assert_eq!(progress.finish(11), None);
        assert_eq!(progress.finish(12), None);
        assert_eq!(progress.finish(10), Some(12));
        progress.start(13);
        progress.start(14);
        assert_eq!(progress.finish(14), None);
        assert_eq!(progress.finish(13), Some(14));
        progress.start(15);
        assert_eq!(progress.finish(15), Some(15));
    }

    #[test]
    fn an_older_offset_dispatched_late_holds_the_prefix_back() {
        let mut progress = Progress::default();
        [10, 12].into_iter().for_each(|o| progress.start(o));
        progress.start(3); // handed over late, e.g. claimed from a member that left
        progress.start(7);
        assert_eq!(progress.finish(7), None, "3 is still in flight");
        assert_eq!(progress.finish(10), None);
        assert_eq!(progress.finish(3), Some(10));
        assert_eq!(progress.finish(12), Some(12));
    }
}
