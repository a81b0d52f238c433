//! One consumer per handler and level: fetch, wait for due time, run the handler, hand failures
//! on, acknowledge. Every backend runs this same loop; it is where the delivery contract lives.

use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBackoff, ExponentialBuilder};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use super::Shutdown;
use crate::backend::{
    Consumer, Delivered, Fetched, HandOff, OutboundRecord, Position, Record, Topic, TopicRole,
};
use crate::batch::{BatchInput, BatchStart};
use crate::clock::{instant_at, now_ms, sleep_until_opt};
use crate::error::{BackendError, Error};
use crate::handlers::{Call, Context, ErrorKind, HandlerError, HandlerSpec, Origin};
use crate::headers::{self, EarlierHops, FailureContext};
use crate::policy::{RetryPolicy, Step, Topology};
use crate::rate::AttemptRate;
use crate::trace::{self, AttemptSpan};

/// Pauses between attempts to hand a failed message on: 50 ms, doubling up to 5 s.
const HAND_OFF_BACKOFF: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(50))
    .with_max_delay(Duration::from_secs(5))
    .without_max_times();
/// Pause after a fetch error before fetching again.
const FETCH_BACKOFF: Duration = Duration::from_millis(200);

/// Everything one level's consumer needs; shared by the levels of a handler.
pub(crate) struct Level {
    pub(crate) spec: &'static HandlerSpec,
    pub(crate) policy: Arc<RetryPolicy>,
    pub(crate) topology: Arc<Topology>,
    /// 0 for the main topic, `n` for retry level `n`.
    pub(crate) level: u32,
    /// The topic this level reads, shared with every `Context` it builds.
    pub(crate) topic: Arc<str>,
    pub(crate) main_topic: Arc<str>,
    pub(crate) shutdown: Shutdown,
    /// The most hand-offs under way at once (started or waiting to be tried again).
    pub(crate) hand_off_window: usize,
    /// The handler's counters, metric handles and health, registered at start: every outcome
    /// is one call on it.
    pub(crate) metrics: Arc<crate::metrics::LevelMetrics>,
    /// The handler's `rate`, shared by its levels.
    pub(crate) rate: Option<Arc<AttemptRate>>,
}

/// Records kept in memory per partition while they wait (not due yet, or behind a failed
/// hand-off); past this the partition is held, so memory stays bounded.
const WAITING_LIMIT: usize = 128;
/// A held partition is fetched again once this few records are left waiting, so the next
/// ones arrive before the kept ones run out.
const RESUME_BELOW: usize = WAITING_LIMIT / 4;

/// Why an attempt failed.
#[derive(Clone)]
struct Failure {
    kind: ErrorKind,
    message: String,
}

impl Failure {
    fn panic(payload: &(dyn std::any::Any + Send)) -> Self {
        Failure {
            kind: ErrorKind::Panic,
            message: panic_message(payload),
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

/// A started attempt: finished at once, or under way.
// `Done` is returned and taken apart at once; boxing it would add the allocation this saves.
#[allow(clippy::large_enum_variant)]
enum Attempt {
    Done(Finished),
    Running(AttemptFuture),
}

/// A finished call of the handler: one record's attempt, or a batch's (one `Done` each).
// As for `Attempt`: the common case moves a `Done`, it does not box one.
#[allow(clippy::large_enum_variant)]
enum Finished {
    One(Done),
    Batch(Vec<Done>),
}

/// A finished attempt, with the record it was for.
struct Done {
    record: Record,
    lineage: Lineage,
    /// The partition's incarnation when the attempt started; a revoke in between makes it stale.
    generation: u32,
    result: Result<(), Failure>,
    /// Its `message` span's trace context, handed on with a failure (zero-sized without
    /// the `opentelemetry` feature).
    span: AttemptSpan,
    /// When the attempt started, for its duration.
    started: std::time::Instant,
}

type AttemptFuture = Pin<Box<dyn Future<Output = Finished> + Send>>;

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
    Spawned(JoinSet<Finished>),
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
    async fn next(&mut self) -> Finished {
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
        // Mostly the oldest one finishes: look from the front.
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

/// A failed message on its way to the next level, the dead-letter or the parking queue. Its
/// source offset stays in flight until the write is durable.
struct PendingHandOff {
    partition: u32,
    offset: u64,
    generation: u32,
    /// Where it goes: a retry level, the dead letters or the parking queue.
    target: TopicRole,
    record: OutboundRecord,
    /// Whether it is being tried again after a failure.
    again: bool,
}

/// A hand-off under way, with what it hands on (kept to try again if it fails).
struct Sending {
    hand_off: Option<PendingHandOff>,
    write: HandOff,
}

impl Future for Sending {
    type Output = (PendingHandOff, Result<Delivered, BackendError>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let result = std::task::ready!(self.write.as_mut().poll(cx));
        Poll::Ready((self.hand_off.take().expect("polled after completion"), result))
    }
}

/// One partition as this level sees it.
struct Partition {
    /// Bumped when the partition is revoked: attempts and hand-offs from before are stale.
    generation: u32,
    progress: Progress,
    /// Fetched records not started yet, in offset order, with their due time (epoch ms; 0
    /// when due): retries that are not due yet, and whatever arrived behind them or behind a
    /// failed hand-off. The head is started from here when due, without fetching it again.
    waiting: VecDeque<(i64, Record)>,
    /// Whether the consumer holds the partition (rewound to after the last waiting record).
    held: bool,
    /// Hand-offs that failed, in source offset order, to be tried again at `retry_at`.
    failed: Vec<PendingHandOff>,
    retry_at: Option<Instant>,
    /// Failed hand-offs tried again and not finished yet.
    retrying: usize,
    /// The pauses before trying failed hand-offs again, from the first failure in a row on.
    backoff: Option<ExponentialBackoff>,
}

impl Partition {
    fn new(generation: u32) -> Self {
        Self {
            generation,
            progress: Progress::default(),
            waiting: VecDeque::new(),
            held: false,
            failed: Vec::new(),
            retry_at: None,
            retrying: 0,
            backoff: None,
        }
    }

    /// A partition whose hand-off failed starts nothing new until it is through: later
    /// failures would overtake it on the next level.
    fn blocked(&self) -> bool {
        !self.failed.is_empty() || self.retrying > 0
    }

    fn keep_failed(&mut self, hand_off: PendingHandOff) {
        let at = self.failed.partition_point(|h| h.offset < hand_off.offset);
        self.failed.insert(at, hand_off);
    }
}

/// What is under way on one level: the consumer, attempts, hand-offs, partition states.
struct Work<C: Consumer> {
    consumer: C,
    /// Indexed by partition number (partitions are small, dense numbers).
    partitions: Vec<Partition>,
    in_flight: InFlight,
    sending: FuturesUnordered<Sending>,
    /// Records waiting and failed hand-offs, over all partitions: when both are 0 there is
    /// nothing to look for in `partitions` on the way round.
    waiting: usize,
    failed: usize,
    /// Calls of the handler under way at once (`concurrency`).
    concurrency: usize,
    /// A batch handler's next batch, gathered from due records.
    gathering: Gathering,
    /// Under a `rate`: no attempt starts before this (the next token).
    throttled_until: Option<Instant>,
}

/// A batch handler's records waiting for their batch to start: up to `max`, for at most
/// `linger` after the first.
struct Gathering {
    /// `max` and `linger`; `None` for a handler of one record at a time.
    limits: Option<(usize, Duration)>,
    /// Each record with its partition's generation and its due time, in the order started.
    records: Vec<(Record, u32, Option<i64>)>,
    /// When the batch starts even if not full.
    deadline: Option<Instant>,
}

impl Gathering {
    fn full(&self) -> bool {
        self.limits.is_some_and(|(max, _)| self.records.len() >= max)
    }
}

impl<C: Consumer> Work<C> {
    fn partition(&mut self, partition: u32) -> &mut Partition {
        let index = partition as usize;
        if index >= self.partitions.len() {
            self.partitions.resize_with(index + 1, || Partition::new(0));
        }
        &mut self.partitions[index]
    }

    /// Hand-offs under way or waiting to be tried again: bounded by the window.
    fn hand_offs(&self) -> usize {
        self.sending.len() + self.failed
    }

    /// Whether another record can start: a free slot, or, for a batch handler, room in the
    /// batch being gathered (batches in flight are bounded when it starts).
    fn room(&self) -> bool {
        match self.gathering.limits {
            None => self.in_flight.len() < self.concurrency,
            Some(_) => !self.gathering.full(),
        }
    }

    /// Acknowledges what finishing `offset` completes.
    async fn finish(&mut self, partition: u32, offset: u64, topic: &str) {
        let upto = self.partition(partition).progress.finish(offset);
        if let Some(upto) = upto {
            if let Err(error) = self.consumer.ack(partition, upto).await {
                tracing::warn!(%topic, partition, offset = upto, %error, "acknowledge failed; the message may be redelivered");
            }
        }
    }

    fn revoke(&mut self, partition: u32) {
        let state = self.partition(partition);
        let generation = state.generation.wrapping_add(1);
        let stale = std::mem::replace(state, Partition::new(generation));
        self.waiting -= stale.waiting.len();
        self.failed -= stale.failed.len();
    }
}

impl Level {
    pub(crate) async fn run<C: Consumer>(self, consumer: C) -> Result<(), Error> {
        let concurrency = self.spec.concurrency().max(1) as usize;
        let window = self.hand_off_window.max(1);
        let batch = match self.spec.call() {
            Call::Batch { max, linger_ms, .. } => {
                Some((max.max(1) as usize, Duration::from_millis(linger_ms)))
            }
            Call::Single(_) => None,
        };
        let mut work = Work {
            consumer,
            partitions: Vec::new(),
            in_flight: if concurrency == 1 {
                InFlight::Inline(None)
            } else {
                InFlight::Spawned(JoinSet::new())
            },
            sending: FuturesUnordered::new(),
            waiting: 0,
            failed: 0,
            concurrency,
            gathering: Gathering {
                limits: batch,
                records: Vec::with_capacity(batch.map_or(0, |(max, _)| max)),
                deadline: None,
            },
            throttled_until: None,
        };
        let mut stopping = false;
        // Registered once, not once per message.
        let requested = self.shutdown.requested();
        tokio::pin!(requested);

        loop {
            let drain_deadline = self.shutdown.deadline();
            // A plain load each round: the request is seen even while messages keep coming,
            // and the waiting future below is polled only when there is nothing else to do.
            if !stopping && drain_deadline.is_some() {
                stopping = true;
                tracing::debug!(topic = %self.topic, group = self.spec.group(), in_flight = work.in_flight.len(),
                    hand_offs = work.hand_offs(), "stopping");
            }
            if !stopping && work.waiting > 0 {
                self.start_waiting(&mut work).await;
            }
            // A batch starts when full, when its linger is over, or at shutdown (what was
            // gathered runs, like any attempt in flight), once a slot is free.
            let batch_due = !work.gathering.records.is_empty()
                && (stopping
                    || work.gathering.full()
                    || work.gathering.deadline.is_some_and(|at| at <= Instant::now()));
            if batch_due && work.in_flight.len() < concurrency {
                self.launch(&mut work);
            }
            if stopping
                && work.in_flight.len() == 0
                && work.hand_offs() == 0
                && work.gathering.records.is_empty()
            {
                break;
            }
            let next_wake = if work.waiting > 0 || work.failed > 0 {
                // Due records matter only when one could start now; otherwise a head that is
                // due already would wake the loop again at once, round after round.
                let can_start = !stopping && work.room();
                next_wake(&work.partitions, can_start, work.throttled_until)
            } else {
                None
            };
            let linger_until = work
                .gathering
                .deadline
                .filter(|_| work.in_flight.len() < concurrency);
            tokio::select! {
                biased;
                finished = work.in_flight.next(), if work.in_flight.len() > 0 => match finished {
                    Finished::One(done) => self.conclude(done, &mut work).await,
                    Finished::Batch(dones) => {
                        for done in dones {
                            self.conclude(done, &mut work).await;
                        }
                    }
                },
                Some((hand_off, result)) = work.sending.next(), if !work.sending.is_empty() => {
                    self.sent(hand_off, result, &mut work).await;
                }
                _ = sleep_until_opt(next_wake), if next_wake.is_some() => {
                    self.try_failed_again(&mut work);
                }
                // The batch's linger is over: the top of the loop starts it.
                _ = sleep_until_opt(linger_until), if linger_until.is_some() => {}
                // Under a rate limit with records waiting for a token, those go first.
                fetched = work.consumer.next(), if !stopping && work.room() && work.hand_offs() < window
                    && (work.throttled_until.is_none() || work.waiting == 0) => match fetched {
                    Ok(Fetched::Record(record)) => {
                        self.metrics.polled();
                        self.take(record, &mut work).await
                    }
                    Ok(Fetched::Assigned(partitions)) => {
                        self.metrics.polled();
                        self.metrics.assigned(&partitions);
                        tracing::debug!(topic = %self.topic, group = self.spec.group(), ?partitions, "assigned");
                    }
                    Ok(Fetched::Revoked(partitions)) => {
                        self.metrics.polled();
                        self.metrics.revoked(&partitions);
                        tracing::debug!(topic = %self.topic, group = self.spec.group(), ?partitions, "revoked");
                        for partition in partitions {
                            work.revoke(partition);
                        }
                    }
                    Err(error @ BackendError::ConsumerStopped { .. }) => return Err(error.into()),
                    Err(error) => {
                        tracing::warn!(topic = %self.topic, group = self.spec.group(), %error, "fetch failed; retrying");
                        tokio::time::sleep(FETCH_BACKOFF).await;
                    }
                },
                _ = sleep_until_opt(drain_deadline), if stopping && drain_deadline.is_some() => {
                    tracing::warn!(topic = %self.topic, group = self.spec.group(), in_flight = work.in_flight.len(),
                        hand_offs = work.hand_offs(),
                        "shutdown deadline reached; unfinished messages stay unacknowledged");
                    break;
                }
                // Wakes an idle consumer; the check above does the rest.
                _ = &mut requested, if !stopping => {}
            }
        }
        // Dropping what is still in flight cancels it (and aborts spawned attempts) before the
        // consumer commits, so nothing unfinished is acknowledged.
        let Work {
            consumer,
            in_flight,
            sending,
            ..
        } = work;
        drop(in_flight);
        drop(sending);
        consumer.close().await.map_err(Error::from)
    }

    /// A fetched record: started now, or kept until it is due (retry levels) or until the
    /// partition's failed hand-off is through.
    async fn take(&self, record: Record, work: &mut Work<impl Consumer>) {
        let due = self.due_at(&record);
        let state = work.partition(record.partition);
        let ready = due.is_none_or(|due| due <= now_ms()) && state.waiting.is_empty() && !state.blocked();
        if ready && self.admit(work) {
            let generation = work.partition(record.partition).generation;
            return self.start(record, generation, due, work).await;
        }
        let (partition, offset) = (record.partition, record.offset);
        let state = work.partition(partition);
        // 0: nothing to wait for but the records ahead of it.
        state.waiting.push_back((due.unwrap_or(0), record));
        let full = state.waiting.len() >= WAITING_LIMIT && !state.held;
        if full {
            // Kept records are not fetched again: the consumer resumes after them.
            state.held = true;
            work.consumer.hold(partition, offset + 1);
            self.metrics.held(partition);
        }
        work.waiting += 1;
    }

    /// Starts waiting records that are due, oldest first per partition, while there is room.
    async fn start_waiting(&self, work: &mut Work<impl Consumer>) {
        let now = now_ms();
        for index in 0..work.partitions.len() {
            loop {
                if !work.room() {
                    return;
                }
                let state = &mut work.partitions[index];
                if state.blocked() {
                    break;
                }
                let Some(&(due, _)) = state.waiting.front() else {
                    break;
                };
                if due > now {
                    break;
                }
                if !self.admit(work) {
                    return;
                }
                let state = &mut work.partitions[index];
                let (due, record) = state.waiting.pop_front().expect("looked at above");
                let generation = state.generation;
                if state.held && state.waiting.len() < RESUME_BELOW {
                    state.held = false;
                    work.consumer.resume(record.partition);
                    self.metrics.resumed(record.partition);
                }
                work.waiting -= 1;
                self.start(record, generation, (due > 0).then_some(due), work)
                    .await;
            }
        }
    }

    /// Under a `rate`: takes a token for one attempt, or notes when the next one comes.
    fn admit(&self, work: &mut Work<impl Consumer>) -> bool {
        let Some(rate) = &self.rate else {
            return true;
        };
        if let Some(at) = work.throttled_until {
            if at > Instant::now() {
                return false;
            }
            work.throttled_until = None;
        }
        match rate.admit() {
            Ok(()) => true,
            Err(at) => {
                work.throttled_until = Some(at);
                false
            }
        }
    }

    /// Runs an attempt (or adds the record to the batch being gathered); `due` is the retry's
    /// `rk-due-at`, read once when it was fetched.
    async fn start(&self, record: Record, generation: u32, due: Option<i64>, work: &mut Work<impl Consumer>) {
        work.partition(record.partition).progress.start(record.offset);
        if let Some((_, linger)) = work.gathering.limits {
            if work.gathering.records.is_empty() {
                work.gathering.deadline = Some(Instant::now() + linger);
            }
            work.gathering.records.push((record, generation, due));
            return;
        }
        self.metrics.started(due);
        // One at a time, an attempt that finishes without waiting (a handler that never
        // awaits) is concluded here, not in another round of the loop.
        let inline = matches!(work.in_flight, InFlight::Inline(_));
        match self.attempt(record, generation, inline) {
            Attempt::Done(Finished::One(done)) => self.conclude(done, work).await,
            Attempt::Done(Finished::Batch(_)) => unreachable!("one record, one attempt"),
            Attempt::Running(attempt) => work.in_flight.push(attempt),
        }
    }

    /// Starts the gathered batch: its records of partitions still assigned, decoded, in one
    /// call of the handler. What does not decode fails on its own (to the dead letters).
    fn launch(&self, work: &mut Work<impl Consumer>) {
        let Call::Batch { call, .. } = self.spec.call() else {
            unreachable!("only batch handlers gather")
        };
        work.gathering.deadline = None;
        let mut records = std::mem::take(&mut work.gathering.records);
        records.retain(|(record, generation, _)| {
            work.partitions
                .get(record.partition as usize)
                .is_some_and(|p| p.generation == *generation)
        });
        if records.is_empty() {
            return;
        }
        let began = std::time::Instant::now();
        let span = tracing::info_span!(
            "batch",
            topic = %self.topic,
            group = self.spec.group(),
            attempt = self.level + 1,
            records = records.len(),
        );
        let mut input = Vec::with_capacity(records.len());
        let mut members = Vec::with_capacity(records.len());
        for (record, generation, due) in records {
            self.metrics.started(due);
            let (lineage, context) = self.context(&record);
            input.push((record.payload.clone().unwrap_or_default(), context));
            members.push((record, lineage, generation));
        }
        let started = {
            let _entered = span.enter();
            std::panic::catch_unwind(AssertUnwindSafe(|| call(BatchInput { records: input })))
        };
        let len = members.len();
        let settle = move |outcomes: Vec<Result<(), Failure>>, span: &tracing::Span| {
            members
                .into_iter()
                .zip(outcomes)
                .map(|((record, lineage, generation), result)| Done {
                    record,
                    lineage,
                    generation,
                    result,
                    span: AttemptSpan::of(span),
                    started: began,
                })
                .collect::<Vec<_>>()
        };
        let BatchStart {
            undecodable,
            positions,
            future,
        } = match started {
            Ok(started) => started,
            Err(panic) => {
                let failure = Failure::panic(&*panic);
                let outcomes = (0..len).map(|_| Err(failure.clone())).collect();
                let dones = settle(outcomes, &span);
                return work
                    .in_flight
                    .push(Box::pin(std::future::ready(Finished::Batch(dones))));
            }
        };
        let mut outcomes: Vec<Result<(), Failure>> = (0..len).map(|_| Ok(())).collect();
        for (position, error) in undecodable {
            outcomes[position] = Err(Failure {
                kind: ErrorKind::Decode,
                message: error.to_string(),
            });
        }
        let timeout = self.spec.timeout();
        let batch = async move {
            if let Some(future) = future {
                match guarded(future, timeout).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        let failed = error.into_outcomes(positions.len());
                        for (&position, error) in positions.iter().zip(failed) {
                            if let Some(error) = error {
                                outcomes[position] = Err(Failure::from(error));
                            }
                        }
                    }
                    Err(failure) => {
                        for &position in &positions {
                            outcomes[position] = Err(failure.clone());
                        }
                    }
                }
            }
            Finished::Batch(settle(outcomes, &tracing::Span::current()))
        };
        work.in_flight.push(Box::pin(batch.instrument(span)));
    }

    /// On a retry level, when the message is due (`rk-due-at`); `None` on the main topic,
    /// whose `rk-*` headers are not trusted.
    fn due_at(&self, record: &Record) -> Option<i64> {
        if self.level == 0 {
            return None;
        }
        headers::due_at_ms(&record.headers)
    }

    fn lineage(&self, record: &Record) -> Lineage {
        let replays = headers::replays(&record.headers);
        // On the main topic rk-* headers may be forged or left over from a replay: counting
        // starts here. Only rk-replays carries forward.
        if self.level == 0 {
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

    /// Starts an attempt. With `poll_now` (one attempt at a time, run inline) the handler is
    /// polled once here: one that finishes without waiting (most do, or decode errors) is done
    /// without the attempt's own boxed future; one that waits is boxed with its state and
    /// polled again by the loop with a real waker, before anything else is started.
    fn attempt(&self, record: Record, generation: u32, poll_now: bool) -> Attempt {
        let began = std::time::Instant::now();
        let (lineage, context) = self.context(&record);
        let span = tracing::info_span!(
            "message",
            topic = %self.topic,
            partition = record.partition,
            offset = record.offset,
            group = self.spec.group(),
            attempt = self.level + 1,
        );
        trace::adopt(&span, &record.headers);
        let payload = record.payload.as_deref().unwrap_or_default();
        let Call::Single(call) = self.spec.call() else {
            unreachable!("a batch handler's records are gathered, not attempted one by one")
        };
        let started = {
            let _entered = span.enter();
            std::panic::catch_unwind(AssertUnwindSafe(|| call(payload, context)))
        };
        let handler = match started {
            Err(panic) => Err(Failure::panic(&*panic)),
            Ok(Err(decode)) => Err(Failure {
                kind: ErrorKind::Decode,
                message: decode.to_string(),
            }),
            Ok(Ok(handler)) => Ok(handler),
        };
        let finished = match handler {
            Err(failure) => Some(Err(failure)),
            Ok(mut handler) if poll_now => {
                let polled = {
                    let _entered = span.enter();
                    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                    std::panic::catch_unwind(AssertUnwindSafe(|| handler.as_mut().poll(&mut cx)))
                };
                match polled {
                    Ok(Poll::Pending) => {
                        return self.running(record, lineage, generation, handler, span, began)
                    }
                    Ok(Poll::Ready(outcome)) => Some(outcome.map_err(Failure::from)),
                    Err(panic) => Some(Err(Failure::panic(&*panic))),
                }
            }
            Ok(handler) => return self.running(record, lineage, generation, handler, span, began),
        };
        Attempt::Done(Finished::One(Done {
            record,
            lineage,
            generation,
            result: finished.expect("every other case returned"),
            span: AttemptSpan::of(&span),
            started: began,
        }))
    }

    /// What the handler is told about `record`, and what its earlier hops say.
    fn context(&self, record: &Record) -> (Lineage, Context) {
        let lineage = self.lineage(record);
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
        (lineage, context)
    }

    /// An attempt whose handler is waiting: boxed, to run in the loop or on its own task.
    fn running(
        &self,
        record: Record,
        lineage: Lineage,
        generation: u32,
        handler: crate::handlers::HandlerFuture,
        span: tracing::Span,
        started: std::time::Instant,
    ) -> Attempt {
        let timeout = self.spec.timeout();
        let attempt_span = AttemptSpan::of(&span);
        Attempt::Running(Box::pin(
            async move {
                let result = match guarded(handler, timeout).await {
                    Ok(outcome) => outcome.map_err(Failure::from),
                    Err(failure) => Err(failure),
                };
                Finished::One(Done {
                    record,
                    lineage,
                    generation,
                    result,
                    span: attempt_span,
                    started,
                })
            }
            .instrument(span),
        ))
    }

    /// Settles a finished attempt: a success is acknowledged (as far as the partition's
    /// finished prefix reaches), a failure is handed on without waiting for the write.
    async fn conclude(&self, done: Done, work: &mut Work<impl Consumer>) {
        let Done {
            record,
            lineage,
            generation,
            result,
            span,
            started,
        } = done;
        self.metrics.concluded(started);
        let (partition, offset) = (record.partition, record.offset);
        if work.partition(partition).generation != generation {
            // Revoked meanwhile: the partition's new owner runs it again.
            return;
        }
        let failure = match result {
            Ok(()) => {
                self.metrics.handled();
                work.finish(partition, offset, &self.topic).await;
                return;
            }
            Err(failure) => failure,
        };
        self.metrics.failed(failure.kind);
        let now = now_ms();
        let step = self
            .policy
            .next(self.level, failure.kind, lineage.replays.unwrap_or(0));
        tracing::warn!(
            topic = %self.topic, partition, offset,
            group = self.spec.group(), attempt = self.level + 1, kind = %failure.kind,
            error = %failure.message, next = ?step, "attempt failed",
        );
        let (target, due_at_ms) = match step {
            Step::Retry { level, delay } => {
                (TopicRole::Retry { level }, Some(now + delay.as_millis() as i64))
            }
            Step::DeadLetter => (TopicRole::DeadLetter, None),
            Step::Park => (TopicRole::Parked, None),
            Step::Drop => {
                tracing::error!(
                    topic = %self.topic, partition, offset,
                    group = self.spec.group(), kind = %failure.kind, error = %failure.message,
                    "message dropped after its last attempt (on_exhausted = \"drop\")",
                );
                self.metrics.dropped();
                work.finish(partition, offset, &self.topic).await;
                return;
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
        span.hand_on(&mut headers);
        let hand_off = PendingHandOff {
            partition,
            offset,
            generation,
            target,
            record: OutboundRecord {
                partition: Some(partition),
                key: record.key,
                payload: record.payload,
                headers,
            },
            again: false,
        };
        let state = work.partition(partition);
        if state.blocked() {
            // Behind a failed hand-off of this partition: in failure order, after it.
            state.keep_failed(hand_off);
            work.failed += 1;
        } else {
            self.send(hand_off, work);
        }
    }

    fn send(&self, hand_off: PendingHandOff, work: &mut Work<impl Consumer>) {
        let role = hand_off.target;
        let topic = self
            .topology
            .topic(role)
            .expect("the policy hands on only to topics of the handler's topology");
        let from = Position {
            partition: hand_off.partition,
            offset: hand_off.offset,
        };
        // Kept to try again if the write fails: the hand-off owns a copy.
        let write = work
            .consumer
            .hand_off(from, Topic::new(topic, role), hand_off.record.clone());
        work.sending.push(Sending {
            hand_off: Some(hand_off),
            write,
        });
    }

    /// A hand-off finished: acknowledged when durable; otherwise kept to be tried again, and
    /// its partition starts nothing new meanwhile (other partitions go on).
    async fn sent(
        &self,
        hand_off: PendingHandOff,
        result: Result<Delivered, BackendError>,
        work: &mut Work<impl Consumer>,
    ) {
        let state = work.partition(hand_off.partition);
        if state.generation != hand_off.generation {
            return;
        }
        if hand_off.again {
            state.retrying -= 1;
        }
        match result {
            Ok(_) => {
                if !state.blocked() {
                    state.backoff = None;
                }
                match hand_off.target {
                    TopicRole::Retry { level } => self.metrics.retried(level),
                    TopicRole::Parked => self.metrics.parked(),
                    _ => self.metrics.dead_lettered(&hand_off.record.headers),
                }
                work.finish(hand_off.partition, hand_off.offset, &self.topic)
                    .await;
            }
            Err(error) => {
                let retry_at = match state.retry_at {
                    Some(at) => at,
                    None => {
                        let pause = state
                            .backoff
                            .get_or_insert_with(|| HAND_OFF_BACKOFF.build())
                            .next()
                            .unwrap_or(Duration::from_secs(5));
                        *state.retry_at.insert(Instant::now() + pause)
                    }
                };
                tracing::warn!(
                    topic = %self.topic, partition = hand_off.partition, offset = hand_off.offset,
                    %error, retry_in = ?retry_at.saturating_duration_since(Instant::now()),
                    "hand-off failed; the partition waits and it is tried again",
                );
                state.keep_failed(hand_off);
                work.failed += 1;
            }
        }
    }

    /// Starts again, in order, the failed hand-offs whose pause is over.
    fn try_failed_again(&self, work: &mut Work<impl Consumer>) {
        if work.failed == 0 {
            return;
        }
        let now = Instant::now();
        for index in 0..work.partitions.len() {
            let state = &mut work.partitions[index];
            if state.retry_at.is_none_or(|at| at > now) {
                continue;
            }
            state.retry_at = None;
            let again = std::mem::take(&mut state.failed);
            state.retrying += again.len();
            work.failed -= again.len();
            for mut hand_off in again {
                hand_off.again = true;
                self.send(hand_off, work);
            }
        }
    }
}

/// When the loop must look again without being woken: the next try of a failed hand-off and,
/// when an attempt could start, the next waiting record's due time.
/// Under a rate limit, no due record starts before `not_before` (the next token).
fn next_wake(partitions: &[Partition], can_start: bool, not_before: Option<Instant>) -> Option<Instant> {
    partitions
        .iter()
        .flat_map(|p| {
            let due = match p.waiting.front() {
                Some(&(due, _)) if can_start && !p.blocked() => {
                    Some(instant_at(due).max(not_before.unwrap_or(Instant::now())))
                }
                _ => None,
            };
            due.into_iter().chain(p.retry_at)
        })
        .min()
}

/// Runs a handler's future (one record's or a batch's) catching a panic and enforcing the
/// `timeout`: either is a failure of the whole call.
async fn guarded<F: Future>(handler: F, timeout: Option<Duration>) -> Result<F::Output, Failure> {
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

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(non-text panic payload)");
    format!("handler panicked: {text}")
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
