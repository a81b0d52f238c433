//! The poll thread: it owns the librdkafka handle, polls all the time (so the member stays in
//! its group however long a handler or a retry delay takes), applies the handle's commands
//! between polls in the order they were sent, puts rebalances in order with the records, and
//! pauses its partitions while the runtime is behind.

use std::sync::atomic::Ordering;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};

mod assignment;

use super::commits::{CommitPolicy, CommitSchedule};
use super::rebalance::{CommitError, RebalanceLog};
use super::written::Written;

use super::{
    record_of, Arena, ByPartition, Command, Item, BATCH, CLOSE_COMMIT_LIMIT, HELD_POLL_WAIT, PAUSE_AFTER,
    POLL_WAIT,
};
use crate::error::BackendError;

/// The poll thread's view of one assigned partition.
struct Assigned {
    generation: u64,
    /// Paused by the runtime until resumed.
    held: bool,
    /// The offset after the last record handed to the runtime.
    next: Option<u64>,
    /// Exactly-once: records whose hand-offs were committed above the committed offset, not
    /// handed to the runtime again (`written.rs`).
    skip: Written,
    /// A record of the assignment was fetched (where it started reading is known).
    started: bool,
}

pub(super) type RawConsumer = BaseConsumer<RebalanceLog>;

pub(super) struct PollThread {
    topic: String,
    items: mpsc::Sender<Vec<Item>>,
    /// Batches the runtime has emptied, to fill again: no allocation per batch.
    emptied: std_mpsc::Receiver<Vec<Item>>,
    /// An empty batch kept from a poll that found nothing.
    spare: Option<Vec<Item>>,
    arena: Arena,
    commands: std_mpsc::Receiver<Command>,
    partitions: ByPartition<Assigned>,
    generations: u64,
    /// A batch the runtime had no room for yet.
    pending: Option<Vec<Item>>,
    /// Partitions paused because the runtime is behind (not because of a hold).
    backpressure: bool,
    /// Since when the runtime has had no room for records.
    behind_since: Option<std::time::Instant>,
    commits: CommitSchedule,
    /// The acknowledgements were asked for since the last commit started.
    acks_asked: bool,
    /// Until when polls wait [`HELD_POLL_WAIT`]: a partition was held or resumed just now,
    /// so the runtime is cycling through a backlog and its next resume comes soon.
    cycling_until: Option<Instant>,
}

/// How long one read of the committed offsets waits (exactly-once, at an assignment)...
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(10);
/// ...and how long after a failed one the next is made.
const COMMITTED_BACKOFF: Duration = Duration::from_millis(500);

/// How long after a hold or a resume polls wait only [`HELD_POLL_WAIT`].
const CYCLING: Duration = Duration::from_millis(100);

impl PollThread {
    pub(super) fn new(
        topic: String,
        items: mpsc::Sender<Vec<Item>>,
        emptied: std_mpsc::Receiver<Vec<Item>>,
        commands: std_mpsc::Receiver<Command>,
        commits: CommitPolicy,
    ) -> Self {
        Self {
            topic,
            items,
            emptied,
            spare: None,
            arena: Arena::default(),
            commands,
            partitions: ByPartition::default(),
            generations: 0,
            pending: None,
            backpressure: false,
            behind_since: None,
            commits: CommitSchedule::new(commits),
            acks_asked: false,
            cycling_until: None,
        }
    }

    pub(super) fn run(mut self, consumer: RawConsumer) {
        loop {
            // Read before the commands: an answer seen here has its acknowledgements in them.
            let answered = consumer.context().ack_request.is_answered();
            if let Err(reply) = self.drain_commands(&consumer) {
                return self.close(consumer, reply);
            }
            // Exactly-once: how the commit on the committer thread went (an abort rewinds).
            consumer.context().take_committed();
            if consumer.context().rewind.swap(false, Ordering::AcqRel) {
                self.rewind(&consumer);
            }
            self.commit_if_due(&consumer, answered);
            self.watch_commits(&consumer);
            if let Some(batch) = self.pending.take() {
                // The runtime is behind. Wait a little for room; if it stays behind, pause
                // fetching but keep polling, so the member stays in its group.
                let unsent = match wait_for_room(&self.items, POLL_WAIT) {
                    Room::Ready(permit) => {
                        permit.send(batch);
                        let mut settlement = consumer.context().settlement();
                        for (partition, assigned) in self.partitions.iter() {
                            settlement.handed(partition, assigned.next);
                        }
                        Ok(())
                    }
                    Room::Full => Err(Some(batch)),
                    Room::Closed => Err(None),
                };
                match unsent {
                    Err(None) => return self.close(consumer, oneshot::channel().0),
                    Ok(()) => {
                        self.behind_since = None;
                        if self.backpressure {
                            self.backpressure = false;
                            for (partition, next) in self.unheld() {
                                self.resume_at(&consumer, partition, next);
                            }
                        }
                    }
                    Err(Some(batch)) => {
                        self.pending = Some(batch);
                        let since = *self.behind_since.get_or_insert_with(std::time::Instant::now);
                        if !self.backpressure && since.elapsed() >= PAUSE_AFTER {
                            self.backpressure = true;
                            let fetching: Vec<u32> = self.unheld().into_iter().map(|(p, _)| p).collect();
                            self.pause(&consumer, &fetching);
                        }
                        if self.backpressure {
                            let mut late = Vec::new();
                            self.poll_batch(&consumer, Duration::ZERO, &mut late);
                            self.pending.as_mut().expect("kept above").extend(late);
                        }
                    }
                }
                continue;
            }
            let mut batch = self
                .spare
                .take()
                .or_else(|| self.emptied.try_recv().ok())
                .unwrap_or_else(|| Vec::with_capacity(BATCH));
            // While the runtime cycles through a backlog it resumes a held partition as soon
            // as its kept records run low; commands are read between polls, so a poll waiting
            // its full round would keep that resume, and every record due behind it, waiting
            // (burst lateness). A partition held for long (a retry level's long delay) polls
            // at the usual pace again after CYCLING.
            let cycling = self.cycling_until.is_some_and(|until| Instant::now() < until);
            let wait = if cycling { HELD_POLL_WAIT } else { POLL_WAIT };
            self.poll_batch(&consumer, wait, &mut batch);
            if batch.is_empty() {
                self.spare = Some(batch);
            } else {
                self.pending = Some(batch);
            }
        }
    }

    /// Applies every queued command, and stores the offsets the runtime acknowledged since the
    /// last round. Returns the reply channel of a close request.
    fn drain_commands(
        &mut self,
        consumer: &RawConsumer,
    ) -> Result<(), oneshot::Sender<Result<(), BackendError>>> {
        let result = loop {
            match self.commands.try_recv() {
                Ok(Command::Close(reply)) => break Err(reply),
                Ok(command) => self.apply(consumer, command),
                Err(std_mpsc::TryRecvError::Empty) => break Ok(()),
                // The handle is gone without closing: commit and leave anyway.
                Err(std_mpsc::TryRecvError::Disconnected) => break Err(oneshot::channel().0),
            }
        };
        // Acknowledgements sent before a command are in their channel by now.
        let (records, _) = consumer.context().settlement().store(consumer, &self.topic);
        self.commits.settled(records);
        result
    }

    /// Starts an asynchronous commit of the stored offsets when the schedule says so; once the
    /// interval has passed, asks the handle for its acknowledgements until then.
    fn commit_if_due(&mut self, consumer: &RawConsumer, answered: bool) {
        let context = consumer.context();
        let now = Instant::now();
        if context.transaction.is_some() && self.commits.interval_passed(now) && self.past_markers(consumer) {
            self.commits.settled(1);
        }
        if !self.commits.due(now, self.acks_asked && answered) {
            if self.commits.interval_passed(now) {
                context.ack_request.raise();
                self.acks_asked = true;
            }
            return;
        }
        if context.transaction.is_some() {
            // On the committer thread; one under way: this one starts after it.
            if !context.commit_in_background(consumer) {
                return;
            }
        } else if let Err(error) = context.commit(consumer, CommitMode::Async, &[]) {
            // Tried again at the next interval, with whatever was settled by then.
            tracing::debug!(topic = %self.topic, %error, "commit not started");
        }
        self.commits.started(now);
        self.acks_asked = false;
    }

    /// Says whether settled work waits past its bound for a commit, and logs when that changes.
    fn watch_commits(&self, consumer: &RawConsumer) {
        let context = consumer.context();
        let bound = self.commits.policy().risk_bound();
        let at_risk = context.settlement().at_risk(Instant::now(), bound);
        let was = context.commits_behind.swap(at_risk.is_some(), Ordering::Relaxed);
        match at_risk {
            Some(risk) if !was => tracing::debug!(topic = %self.topic, partition = risk.partition,
                waited = ?risk.waited, records = risk.records, "settled records wait for their commit"),
            None if was => tracing::debug!(topic = %self.topic, "nothing waits for a commit any more"),
            _ => {}
        }
    }

    /// Polls up to a batch of records (waiting at most `wait` for the first), with the
    /// rebalance events raised meanwhile in their place.
    fn poll_batch(&mut self, consumer: &RawConsumer, mut wait: Duration, batch: &mut Vec<Item>) {
        let start = batch.len();
        while batch.len() - start < BATCH {
            let polled = consumer.poll(wait);
            self.take_rebalances(consumer, batch);
            match polled {
                None => break,
                Some(Ok(message)) => self.push_record(consumer, &message, batch),
                Some(Err(error)) => {
                    // The brokers' refusal, when a recent one explains it.
                    let error = consumer.context().refusals.explain(error);
                    tracing::warn!(topic = %self.topic, %error, "consumer error; librdkafka retries");
                    break;
                }
            }
            wait = Duration::ZERO;
        }
    }

    fn push_record(&mut self, consumer: &RawConsumer, message: &BorrowedMessage<'_>, batch: &mut Vec<Item>) {
        let partition = message.partition() as u32;
        let Some(assigned) = self.partitions.get_mut(partition) else {
            return;
        };
        if !assigned.started {
            // Where the assignment started reading, unless its committed offset said so.
            assigned.started = true;
            consumer
                .context()
                .settlement()
                .started(partition, message.offset() as u64);
        }
        if !assigned.skip.is_empty() && assigned.skip.contains(message.offset() as u64) {
            // Handed on in a committed transaction already.
            return;
        }
        let record = record_of(message, &mut self.arena);
        assigned.next = Some(record.offset + 1);
        batch.push(Item::Record {
            generation: assigned.generation,
            record,
        });
    }

    fn apply(&mut self, consumer: &RawConsumer, command: Command) {
        match command {
            Command::Hold {
                partition,
                generation,
            } => {
                let Some(assigned) = self.current(partition, generation) else {
                    return;
                };
                // What was handed over stays with the handle (parked); fetching stops here and
                // goes on from `next` after the resume.
                assigned.held = true;
                self.pause(consumer, &[partition]);
                self.cycling_until = Some(Instant::now() + CYCLING);
            }
            Command::Resume {
                partition,
                generation,
            } => {
                let Some(assigned) = self.current(partition, generation) else {
                    return;
                };
                if !std::mem::take(&mut assigned.held) {
                    return;
                }
                let next = assigned.next;
                self.cycling_until = Some(Instant::now() + CYCLING);
                if !self.backpressure {
                    self.resume_at(consumer, partition, next);
                }
            }
            Command::Follow(following) => self.follow(consumer, following),
            Command::Close(_) => unreachable!("handled by run"),
        }
    }

    /// Assigned partitions that are not held, with the offset to resume them at.
    fn unheld(&self) -> Vec<(u32, Option<u64>)> {
        self.partitions
            .iter()
            .filter(|(_, a)| !a.held)
            .map(|(p, a)| (p, a.next))
            .collect()
    }

    fn current(&mut self, partition: u32, generation: u64) -> Option<&mut Assigned> {
        self.partitions
            .get_mut(partition)
            .filter(|a| a.generation == generation)
    }

    fn pause(&self, consumer: &RawConsumer, partitions: &[u32]) {
        if partitions.is_empty() {
            return;
        }
        if let Err(error) = consumer.pause(&self.list(partitions)) {
            tracing::warn!(topic = %self.topic, ?partitions, %error, "pause failed");
        }
    }

    fn resume(&self, consumer: &RawConsumer, partitions: &[u32]) {
        if partitions.is_empty() {
            return;
        }
        if let Err(error) = consumer.resume(&self.list(partitions)) {
            tracing::warn!(topic = %self.topic, ?partitions, %error, "resume failed");
        }
    }

    /// Resumes `partition` at `offset`, the one after the last record handed over: librdkafka
    /// drops prefetched messages on pause, so fetching must go on from there explicitly.
    fn resume_at(&self, consumer: &RawConsumer, partition: u32, offset: Option<u64>) {
        self.resume(consumer, &[partition]);
        if let Some(offset) = offset {
            let seek = consumer.seek(
                &self.topic,
                partition as i32,
                Offset::Offset(offset as i64),
                Duration::from_secs(5),
            );
            if let Err(error) = seek {
                tracing::warn!(topic = %self.topic, partition, offset, %error, "seek failed");
            }
        }
    }

    fn list(&self, partitions: &[u32]) -> TopicPartitionList {
        let mut list = TopicPartitionList::with_capacity(partitions.len());
        for &partition in partitions {
            list.add_partition(&self.topic, partition as i32);
        }
        list
    }

    fn close(mut self, consumer: RawConsumer, reply: oneshot::Sender<Result<(), BackendError>>) {
        // The handle sent its acknowledgements before asking to close.
        consumer.context().closing.store(true, Ordering::Release);
        consumer.context().settlement().store(&consumer, &self.topic);
        if consumer.context().transaction.is_some() {
            self.past_markers(&consumer);
        }
        // Other members of the group (the other levels) may be leaving at the same moment; a
        // commit during their rebalance is refused, so keep serving the group and try again.
        let deadline = std::time::Instant::now() + CLOSE_COMMIT_LIMIT;
        if let Some(committer) = &consumer.context().transaction {
            // The commit under way and this one, with their recoveries, end by then too.
            committer.transaction().close_by(deadline);
        }
        let all: Vec<u32> = self.partitions.iter().map(|(p, _)| p).collect();
        let committed = loop {
            match consumer.context().commit(&consumer, CommitMode::Sync, &all) {
                // Nothing stored since the last commit is not a failure.
                Ok(())
                | Err(CommitError::Offsets(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset))) => {
                    break Ok(())
                }
                Err(CommitError::Offsets(KafkaError::ConsumerCommit(code)))
                    if retriable(code) && std::time::Instant::now() < deadline =>
                {
                    tracing::debug!(topic = %self.topic, %code, "commit on close refused; retrying");
                    let _ = consumer.poll(Duration::from_millis(50));
                }
                Err(CommitError::Offsets(error)) => break Err(consumer.context().refusals.explain(error)),
                Err(error @ CommitError::Aborted) => break Err(super::transport(error)),
            }
        };
        // Dropping the consumer closes it: it leaves the group now, not after a session timeout.
        drop(consumer);
        let _ = reply.send(committed);
    }
}

/// Commit errors that pass once the group settles.
fn retriable(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::RebalanceInProgress
            | RDKafkaErrorCode::IllegalGeneration
            | RDKafkaErrorCode::CoordinatorLoadInProgress
            | RDKafkaErrorCode::CoordinatorNotAvailable
            | RDKafkaErrorCode::NotCoordinator
            | RDKafkaErrorCode::RequestTimedOut
    )
}

enum Room<'a> {
    Ready(mpsc::Permit<'a, Vec<Item>>),
    Full,
    Closed,
}

/// Waits up to `limit` for room in the channel to the runtime, parking this (non-runtime)
/// thread until the runtime takes a batch, rather than spinning.
fn wait_for_room(items: &mpsc::Sender<Vec<Item>>, limit: Duration) -> Room<'_> {
    use std::future::Future;
    use std::task::{Context, Poll, Wake, Waker};

    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }

    let waker = Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut reserve = std::pin::pin!(items.reserve());
    let deadline = std::time::Instant::now() + limit;
    loop {
        match reserve.as_mut().poll(&mut context) {
            Poll::Ready(Ok(permit)) => return Room::Ready(permit),
            Poll::Ready(Err(_)) => return Room::Closed,
            Poll::Pending => {
                let now = std::time::Instant::now();
                if now >= deadline {
                    return Room::Full;
                }
                std::thread::park_timeout(deadline - now);
            }
        }
    }
}
