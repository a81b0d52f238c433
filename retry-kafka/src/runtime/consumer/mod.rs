//! One consumer per handler and level: fetch, wait for due time, run the handler, hand failures
//! on, acknowledge. Every backend runs this same loop; it is where the delivery contract lives.
//!
//! The loop only decides what to wait for next; each concern is a part of its own:
//! - [`partitions`]: records waiting per partition, hold and resume, the acknowledged prefix;
//! - [`hand_offs`]: the pipeline of failed messages on their way on (window, backoff, order);
//! - [`attempt`]: what every attempt shares, and the [`Attempts`] strategy, run by
//!   [`one_record`] or [`batches`];
//! - [`gate`]: the handler's `rate`;
//! - [`at_risk`]: no attempt starts while the consumer's commits are behind;
//! - [`outcome`]: what a failure becomes by the policy;
//! - [`outputs`]: where a successful attempt's outputs (`Context::emit`) go;
//! - [`key_holds`]: a key-ordered handler's later records wait behind their key's retry;
//!   [`key_order`] is one level's view of those holds, and [`begin`] the loop's steps for them.

mod at_risk;
mod attempt;
mod batches;
mod begin;
mod gate;
mod hand_offs;
pub(crate) mod key_holds;
mod key_order;
mod one_record;
mod outcome;
pub(crate) mod outputs;
mod partitions;

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::time::Instant;

use self::at_risk::CommitWatch;
use self::attempt::{Attempts, Done};
use self::batches::Batches;
use self::gate::RateGate;
use self::hand_offs::{HandOffs, PendingHandOff, Targets, Ticket};
use self::key_holds::{Conclusion, KeyHolds, Stage};
use self::key_order::KeyOrder;
use self::one_record::OneRecord;
use self::outputs::{OutputRoute, PublishOutputs};
use self::partitions::Partitions;
use crate::backend::{Consumer, Delivered, Fetched, Record, TopicRole, Undelivered};
use crate::breaker::{CircuitBreaker, Outcome};
use crate::clock::{now_ms, sleep_until_opt};
use crate::error::{BackendError, Error};
use crate::handlers::{Call, HandlerSpec};
use crate::policy::{RetryPolicy, Topology};
use crate::rate::AttemptRate;
use crate::shutdown::Shutdown;

/// Pause after a fetch error before fetching again.
const FETCH_BACKOFF: Duration = Duration::from_millis(200);
/// Records taken in one round of the loop after the one it fetched, when the consumer has
/// them at hand: enough to spread the round's cost, few enough that timers are not late.
const AT_HAND: usize = 63;

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
    /// The handler's circuit breaker, shared by its levels.
    pub(crate) breaker: Option<Arc<CircuitBreaker>>,
    /// A key-ordered handler's holds, shared by its levels (`ordering = "key"`).
    pub(crate) key_holds: Option<Arc<KeyHolds>>,
    /// Whether this consumer reads the handler's held topic (then `level` is 0: its records
    /// get their first attempt here).
    pub(crate) held: bool,
    /// Where successful attempts' outputs are published when the consumer does not write
    /// them in its transaction: the app's backend.
    pub(crate) publisher: Arc<dyn PublishOutputs>,
}

impl Level {
    /// Consumes until shutdown, then commits what finished and leaves the group.
    pub(crate) async fn run<C: Consumer>(self, consumer: C) -> Result<(), Error> {
        let concurrency = self.spec.concurrency().max(1) as usize;
        let route = match consumer.writes_outputs() {
            true => OutputRoute::Consumer,
            false => OutputRoute::Publish(self.publisher.clone()),
        };
        match self.spec.call() {
            Call::Single(call) => {
                let attempts = OneRecord::new(call, concurrency, route);
                LevelLoop::new(self, consumer, attempts).run().await
            }
            Call::Batch { max, linger_ms, call } => {
                let linger = Duration::from_millis(linger_ms);
                let attempts = Batches::new(call, max, linger, concurrency, route);
                LevelLoop::new(self, consumer, attempts).run().await
            }
        }
    }
}

/// One level's consumer at work: its parts, and the loop that asks each what it waits for.
struct LevelLoop<C, A> {
    level: Level,
    consumer: C,
    partitions: Partitions,
    attempts: A,
    hand_offs: HandOffs,
    /// Where hand-offs go, by role, named once.
    targets: Targets,
    gate: RateGate,
    /// Whether the consumer's commits are behind: no attempt starts meanwhile.
    commits: CommitWatch,
    /// A key-ordered handler's holds, as this level sees them.
    order: Option<KeyOrder>,
    /// Shutdown was requested: nothing new starts, what is under way finishes.
    stopping: bool,
}

/// Until a key's retry concludes, when the level waits for that (the held level).
async fn released(order: &mut Option<KeyOrder>) {
    match order {
        Some(order) => order.released().await,
        None => std::future::pending().await,
    }
}

impl<C: Consumer, A: Attempts> LevelLoop<C, A> {
    fn new(level: Level, consumer: C, attempts: A) -> Self {
        Self {
            hand_offs: HandOffs::new(level.hand_off_window, consumer.hand_off_reports().clone()),
            targets: Targets::of(&level.topology),
            gate: RateGate::new(level.rate.clone(), level.breaker.clone()),
            commits: CommitWatch::new(level.metrics.health.clone()),
            order: level.key_holds.clone().map(|holds| {
                let stage = match (level.level, level.held) {
                    (0, false) => Stage::Main,
                    (0, true) => Stage::Held,
                    _ => Stage::Retry,
                };
                KeyOrder::new(holds, stage, level.spec.concurrency() as usize)
            }),
            level,
            consumer,
            partitions: Partitions::default(),
            attempts,
            stopping: false,
        }
    }

    async fn run(mut self) -> Result<(), Error> {
        let shutdown = self.level.shutdown.clone();
        // Registered once, not once per message.
        let requested = shutdown.requested();
        tokio::pin!(requested);

        loop {
            let drain_deadline = shutdown.deadline();
            // A plain load each round: the request is seen even while messages keep coming,
            // and the waiting future below is polled only when there is nothing else to do.
            if !self.stopping && drain_deadline.is_some() {
                self.stopping = true;
                tracing::debug!(topic = %self.level.topic, group = self.level.spec.group(),
                    in_flight = self.attempts.in_flight(), hand_offs = self.hand_offs.under_way(), "stopping");
            }
            let startable = self
                .commits
                .refresh(&self.consumer, &self.level.topic, self.level.spec.group());
            if !self.stopping && startable && self.partitions.waiting() > 0 {
                self.start_waiting().await;
            }
            self.attempts.launch(&self.level, self.stopping, &self.partitions);
            if self.stopping && self.attempts.idle() && self.hand_offs.under_way() == 0 {
                break;
            }
            let wake = self.next_wake();
            let linger = self.attempts.wake_at();
            let fetch = self.wants_fetch();
            let waits_for_releases = self.partitions.waiting() > 0
                && self.order.as_ref().is_some_and(KeyOrder::waits_for_releases);
            let (stuck, look) = self.stuck_on_operators();
            tokio::select! {
                biased;
                finished = self.attempts.next(), if self.attempts.in_flight() > 0 => {
                    for done in finished {
                        self.conclude(done).await;
                    }
                }
                _ = self.hand_offs.wait(), if self.hand_offs.is_sending() => {
                    self.sent_all().await;
                }
                _ = sleep_until_opt(wake), if wake.is_some() => {
                    let Self { consumer, hand_offs, targets, .. } = &mut self;
                    hand_offs.retry_due(|id, ticket, record| targets.write(consumer, id, ticket, record));
                }
                // A batch's linger is over: the top of the loop starts it.
                _ = sleep_until_opt(linger), if linger.is_some() => {}
                // A key's retry concluded: its held records may start (the top of the loop).
                _ = released(&mut self.order), if waits_for_releases => {}
                _ = sleep_until_opt(look), if look.is_some() => {
                    if let Some(order) = &mut self.order {
                        for record in order.look_for_resolutions(stuck).await {
                            self.partitions.inject(record);
                        }
                    }
                }
                fetched = self.consumer.next(), if fetch => {
                    // Once per round, not per record: a clock read per record showed in the
                    // success path's instruction count.
                    self.level.metrics.polled();
                    self.fetched(fetched).await?;
                    self.take_at_hand().await?;
                }
                _ = sleep_until_opt(drain_deadline), if self.stopping && drain_deadline.is_some() => {
                    tracing::warn!(topic = %self.level.topic, group = self.level.spec.group(),
                        in_flight = self.attempts.in_flight(), hand_offs = self.hand_offs.under_way(),
                        "shutdown deadline reached; unfinished messages stay unacknowledged");
                    break;
                }
                // Wakes an idle consumer; the check above does the rest.
                _ = &mut requested, if !self.stopping => {}
            }
        }
        // Dropping what is still in flight cancels it (and aborts spawned attempts) before the
        // consumer commits, so nothing unfinished is acknowledged.
        let LevelLoop {
            consumer,
            attempts,
            hand_offs,
            ..
        } = self;
        drop(attempts);
        drop(hand_offs);
        consumer.close().await.map_err(Error::from)
    }

    /// Whether to fetch: not stopping, commits not behind, room for another attempt and in the
    /// hand-off window, and, under a rate limit, no records waiting for a token (those go
    /// first).
    fn wants_fetch(&self) -> bool {
        let waiting_for_token = self.gate.throttled_until().is_some() && self.partitions.waiting() > 0;
        !self.stopping
            && !self.commits.stopped()
            && self.attempts.room()
            && self.hand_offs.has_room()
            && !waiting_for_token
    }

    /// When the loop must look again without being woken: the next try of a failed hand-off,
    /// the next look at the commits while they are behind and, when an attempt could start,
    /// the next waiting record's due time (not before the next rate token).
    fn next_wake(&self) -> Option<Instant> {
        let recheck = self.commits.recheck_at();
        if self.partitions.waiting() == 0 && self.hand_offs.failed() == 0 {
            return recheck;
        }
        // Due records matter only when one could start now; otherwise a head that is due
        // already would wake the loop again at once, round after round.
        let can_start = !self.stopping && !self.commits.stopped() && self.attempts.room();
        let due = if can_start {
            // A held record whose key is still out waits for a release, not for a time.
            let startable = |index| {
                !self.hand_offs.blocks(index)
                    && match (&self.order, self.partitions.head(index)) {
                        (Some(order), Some(head)) => order.may_start_now(head),
                        _ => true,
                    }
            };
            self.partitions.next_due(startable, self.gate.throttled_until())
        } else {
            None
        };
        due.into_iter()
            .chain(self.hand_offs.next_retry())
            .chain(recheck)
            .min()
    }

    async fn fetched(&mut self, fetched: Result<Fetched, BackendError>) -> Result<(), Error> {
        let (level, metrics) = (&self.level, &self.level.metrics);
        match fetched {
            Ok(Fetched::Record(record)) => self.take(record).await,
            Ok(Fetched::Assigned(partitions)) => {
                metrics.assigned(&partitions);
                tracing::debug!(topic = %level.topic, group = level.spec.group(), ?partitions, "assigned");
                if let Some(order) = &self.order {
                    // Before any record of these partitions: their keys' holds, counted.
                    while let Err(error) = order.assigned(&partitions).await {
                        if level.shutdown.deadline().is_some() {
                            break;
                        }
                        tracing::warn!(topic = %level.topic, group = level.spec.group(), ?partitions, %error,
                            "counting the held keys of assigned partitions failed; retrying");
                        tokio::time::sleep(FETCH_BACKOFF).await;
                    }
                }
            }
            Ok(Fetched::Revoked(partitions)) => {
                metrics.revoked(&partitions);
                tracing::debug!(topic = %level.topic, group = level.spec.group(), ?partitions, "revoked");
                if let Some(order) = &mut self.order {
                    order.revoked(&partitions);
                }
                for partition in partitions {
                    self.partitions.revoke(partition);
                    self.hand_offs.revoke(partition);
                }
            }
            Err(error @ BackendError::ConsumerStopped { .. }) => return Err(error.into()),
            Err(error) => {
                tracing::warn!(topic = %level.topic, group = level.spec.group(), %error, "fetch failed; retrying");
                tokio::time::sleep(FETCH_BACKOFF).await;
            }
        }
        Ok(())
    }

    /// Takes, in the round that fetched one, what the consumer already has at hand (up to
    /// [`AT_HAND`] more), each after what a round of the loop would have looked at first:
    /// finished hand-offs (so a partition whose hand-off just failed starts nothing new), a
    /// shutdown request, room. A round of `select!` per record cost a tenth of the success
    /// path's instructions (callgrind, docs/benchmarks.md). Timers wait for the next round.
    async fn take_at_hand(&mut self) -> Result<(), Error> {
        for _ in 0..AT_HAND {
            // Every hand-off already through, as rounds of the `biased` select would take
            // them before another record.
            if self.hand_offs.poll_finished() {
                self.sent_all().await;
            }
            // Attempts under way (concurrency > 1, or a handler that waits) finish in the
            // loop's own order; a due waiting record or a batch to start goes first.
            if self.attempts.in_flight() > 0
                || self.level.shutdown.deadline().is_some()
                || !self.wants_fetch()
                || self.partitions.waiting() > 0
            {
                break;
            }
            let Some(fetched) = self.consumer.next().now_or_never() else {
                break;
            };
            self.fetched(fetched).await?;
        }
        Ok(())
    }

    /// A fetched record: started now, or kept until it is due (retry levels) or until the
    /// partition's failed hand-off is through.
    async fn take(&mut self, record: Record) {
        let partition = record.partition;
        // Put in before it was fetched (a held level's look past a full partition): not again.
        if let Some(done) = self.partitions.fetched_again(partition, record.offset) {
            if let Some(upto) = done {
                self.acknowledge(partition, upto).await;
            }
            return;
        }
        let due = self.level.due_at(&record);
        let ready = due.is_none_or(|due| due <= now_ms())
            && !self.commits.stopped()
            && self.partitions.none_waiting(partition)
            && !self.hand_offs.blocks(partition as usize)
            && self.order.as_mut().is_none_or(|order| order.may_start(&record));
        if ready {
            let generation = self.partitions.generation(partition);
            // A held key's record is handed on, not attempted: no rate token, no breaker.
            if let Some(begin) = self.begin_of(&record) {
                if !begin.attempts() || self.gate.admit() {
                    return self.begin(begin, record, generation, due).await;
                }
            }
        }
        if let Some(from) = self.partitions.keep(record, due) {
            self.consumer.hold(partition, from);
            self.level.metrics.held(partition);
        }
    }

    /// Starts waiting records that are due, oldest first per partition, while there is room.
    async fn start_waiting(&mut self) {
        let now = now_ms();
        for index in 0..self.partitions.len() {
            loop {
                if !self.attempts.room() {
                    return;
                }
                if self.hand_offs.blocks(index) || !self.partitions.head_due(index, now) {
                    break;
                }
                // Key-ordered: the first waiting record whose key may go (a record of a key
                // that may not is passed over, and so are the later ones of that key, even if
                // the key is released while the look goes on).
                let at = match &mut self.order {
                    None => 0,
                    Some(order) => {
                        order.begin_scan();
                        let first = self
                            .partitions
                            .first_due(index, now, |record| order.may_start_in_scan(record));
                        match first {
                            Some(at) => at,
                            None => break,
                        }
                    }
                };
                let Some(begin) = self
                    .partitions
                    .waiting_at(index, at)
                    .and_then(|r| self.begin_of(r))
                else {
                    break;
                };
                if begin.attempts() && !self.gate.admit() {
                    return;
                }
                let next = self.partitions.take_at(index, at).expect("it is due");
                if next.resume {
                    let partition = next.record.partition;
                    self.consumer.resume(partition);
                    self.level.metrics.resumed(partition);
                }
                self.begin(begin, next.record, next.generation, next.due).await;
            }
        }
    }

    async fn start(&mut self, record: Record, generation: u32, due: Option<i64>) {
        self.partitions.started(record.partition, record.offset);
        if let Some(order) = &mut self.order {
            order.started(&record);
        }
        if let Some(finished) = self.attempts.start(&self.level, record, generation, due) {
            for done in finished {
                self.conclude(done).await;
            }
        }
    }

    /// Settles a finished attempt: a success is acknowledged (as far as the partition's
    /// finished prefix reaches), a failure is handed on without waiting for the write.
    async fn conclude(&mut self, done: Done) {
        let Done {
            record,
            generation,
            result,
            span,
            started,
            outputs,
        } = done;
        self.level.metrics.concluded(started);
        let (partition, offset) = (record.partition, record.offset);
        // Read before the record is handed on: its key and where it first came from.
        let key = self
            .order
            .as_mut()
            .and_then(|order| order.concluding(&record, result.is_ok()));
        // Every outcome tells the breaker about the dependency, a revoked partition's too.
        let held_back = self.level.breaker.as_ref().is_some_and(|breaker| {
            breaker.conclude(match &result {
                Ok(()) => Outcome::Succeeded,
                Err(failure) => Outcome::of_failure(failure.kind),
            })
        });
        if !self.partitions.is_current(partition, generation) {
            // Revoked meanwhile: the partition's new owner runs it again.
            return;
        }
        let failure = match result {
            Ok(()) => {
                self.level.metrics.handled();
                self.key_concluded(key, Conclusion::Done);
                if !outputs.is_empty() {
                    // Into the consumer's transaction; acknowledged once they are in, like a
                    // hand-off.
                    return self.hand_on(PendingHandOff::emitting(partition, offset, generation, outputs));
                }
                return self.finish(partition, offset).await;
            }
            Err(failure) => failure,
        };
        if held_back {
            // The outage's failure, not the record's: it waits in its place (its offset stays
            // in flight) and is attempted again once the breaker lets attempts through.
            self.level.metrics.failed(failure.kind);
            tracing::debug!(topic = %self.level.topic, partition, offset, kind = %failure.kind,
                error = %failure.message, "attempt failed while the breaker is open; the record waits");
            let due = self.level.due_at(&record);
            self.partitions.put_back(record, due);
            return;
        }
        let Some(hand_off) = self.level.hand_off_of(record, failure, span, generation) else {
            self.key_concluded(key, Conclusion::Done);
            return self.finish(partition, offset).await;
        };
        self.key_concluded(
            key,
            match hand_off.ticket.target {
                TopicRole::Retry { .. } => Conclusion::Retried,
                // A failure handed to the held topic is a last one that holds its key.
                TopicRole::Held => Conclusion::DeadHeld,
                _ => Conclusion::Done,
            },
        );
        self.hand_on(hand_off);
    }

    /// Sends a hand-off, or queues it behind its partition's failed one.
    fn hand_on(&mut self, hand_off: PendingHandOff) {
        let partition = hand_off.ticket.partition;
        if self.hand_offs.blocks(partition as usize) {
            // Behind a failed hand-off of this partition: in failure order, after it.
            self.hand_offs.queue_behind(hand_off);
        } else {
            let Self {
                consumer,
                hand_offs,
                targets,
                ..
            } = self;
            hand_offs.send(hand_off, |id, ticket, record| {
                targets.write(consumer, id, ticket, record)
            });
        }
    }

    /// Every hand-off taken as finished, in the order they were reported.
    async fn sent_all(&mut self) {
        while let Some((ticket, result)) = self.hand_offs.finished() {
            self.sent(ticket, result).await;
        }
    }

    /// A hand-off finished: acknowledged when durable; otherwise kept to be tried again, and
    /// its partition starts nothing new meanwhile (other partitions go on).
    async fn sent(&mut self, ticket: Ticket, result: Result<Delivered, Undelivered>) {
        if !self.partitions.is_current(ticket.partition, ticket.generation) {
            return;
        }
        let (partition, offset) = (ticket.partition, ticket.offset);
        match result {
            Ok(_) => {
                self.hand_offs.written(&ticket);
                self.level.handed_off(&ticket);
                self.finish(partition, offset).await;
            }
            Err(Undelivered {
                error,
                given_up: true,
                ..
            }) => {
                // Its partition is being taken away (a revoke or a rewind is on its way): the
                // next reader runs the source again; nothing to try again here.
                self.hand_offs.given_up(&ticket);
                tracing::debug!(topic = %self.level.topic, partition, offset, %error,
                    "hand-off not written: its partition was given up");
            }
            Err(Undelivered { error, record, .. }) => {
                let retry_at = self.hand_offs.write_failed(PendingHandOff::new(ticket, record));
                tracing::warn!(
                    topic = %self.level.topic, partition, offset,
                    %error, retry_in = ?retry_at.saturating_duration_since(Instant::now()),
                    "hand-off failed; the partition waits and it is tried again",
                );
            }
        }
    }

    /// Acknowledges what finishing `offset` completes.
    async fn finish(&mut self, partition: u32, offset: u64) {
        if let Some(upto) = self.partitions.finish(partition, offset) {
            self.acknowledge(partition, upto).await;
        }
    }

    /// Acknowledges `partition` up to `upto`.
    async fn acknowledge(&mut self, partition: u32, upto: u64) {
        if let Err(error) = self.consumer.ack(partition, upto).await {
            tracing::warn!(topic = %self.level.topic, partition, offset = upto, %error,
                "acknowledge failed; the message may be redelivered");
        }
    }
}
