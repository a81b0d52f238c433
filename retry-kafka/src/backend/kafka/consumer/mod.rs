//! A Kafka consumer: a poll thread that owns the librdkafka handle, and the handle the runtime
//! holds.
//!
//! The thread polls all the time, so the member stays in its group however long a handler or
//! a retry delay takes (librdkafka's `max.poll.interval.ms` counts time between polls). Every
//! call on the librdkafka handle (pause, seek, resume, store offsets) happens on that thread,
//! between polls, in the order the runtime asked for it. Records travel to the runtime in
//! batches over a bounded channel; when it is full, the thread pauses its partitions and keeps
//! polling.
//!
//! A hold pauses fetching the partition; records of it that were fetched already (in the
//! channel, or in the handle's buffer) are parked in the handle, not dropped, and delivered
//! first on resume, so a held partition is never fetched twice. The thread resumes fetching
//! where it stopped handing records over. Each record carries the partition's assignment
//! generation at fetch time; the handle drops records of an assignment that has since changed.
//!
//! This file is the handle; `poll/` the thread; `settle.rs` the acknowledgements it stores;
//! `commits.rs` when it commits them; `record.rs` how a fetched message is copied into a record.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer as _;
use tokio::sync::{mpsc, oneshot};

mod commits;
mod committer;
mod poll;
mod rebalance;
mod record;
mod settle;
mod transaction;
mod written;

use crate::backend::follow::{Followers, Following};
use commits::AckRequest;
pub(crate) use commits::CommitPolicy;
pub(crate) use record::{record_of, Arena};

use super::{transport, Kafka};
use crate::backend::{
    Consumer, Fetched, HandOffId, HandOffReports, OutboundRecord, Output, Position, Record, Subscription,
    Topic,
};
use crate::error::BackendError;
use committer::Committer;
use poll::{PollThread, RawConsumer};
use rebalance::RebalanceLog;
use settle::Settlement;
use transaction::Transaction;

/// Records per batch sent to the runtime.
const BATCH: usize = 256;
/// Batches in flight between the poll thread and the runtime.
const CHANNEL_BATCHES: usize = 8;
/// How long the runtime may be behind before the poll thread pauses fetching.
const PAUSE_AFTER: Duration = Duration::from_secs(1);
/// How long closing keeps trying to commit while the group rebalances.
const CLOSE_COMMIT_LIMIT: Duration = Duration::from_secs(10);
/// How long one poll waits for a message; also the most a command (e.g. a resume) waits.
const POLL_WAIT: Duration = Duration::from_millis(20);
/// The same while the runtime holds a partition: its resume comes soon and must not wait.
const HELD_POLL_WAIT: Duration = Duration::from_millis(1);

pub(crate) fn config(brokers: &str, group: &str, properties: &[(String, String)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        // The poll thread commits (`commits.rs`), sooner than this and after a count of records
        // too, and does not send a failed one again; librdkafka's auto-commit stays as the
        // backstop that does (a commit refused during a rebalance, or while the broker was
        // gone). It sends nothing when the stored offsets were committed.
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        // At least once: an offset is stored only when the runtime acknowledges it.
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // Records wait in librdkafka's queue while the handlers catch up; when that queue is over
        // its threshold librdkafka postpones the next fetch by this much (default 1 s), which
        // left the consumer idle: 10 ms keeps it fed (measured: ~170k -> ~650k msg/s).
        .set("fetch.queue.backoff.ms", "10");
    // The levels of a handler share its group but read different topics: with the cooperative
    // protocol a member joining for one level takes nothing from the others, so starting,
    // scaling and stopping do not revoke (and redeliver) work in flight. The consumer group
    // protocol (KIP-848, `group.protocol=consumer`) is incremental by itself and refuses the
    // setting: the broker assigns.
    let consumer_protocol = properties
        .iter()
        .any(|(key, value)| key == "group.protocol" && value.eq_ignore_ascii_case("consumer"));
    if !consumer_protocol {
        config.set("partition.assignment.strategy", "cooperative-sticky");
    }
    for (key, value) in properties {
        config.set(key, value);
    }
    config
}

/// What the poll thread sends to the handle, in fetch order.
enum Item {
    Record { generation: u64, record: Record },
    Assigned(Vec<(u32, u64)>),
    Revoked(Vec<u32>),
}

/// Acknowledgements folded on the runtime's side before they go to the poll thread anyway.
const ACK_FLUSH: usize = 256;

/// Acknowledgements folded to the highest offset per partition and assignment generation. The
/// handle folds what the runtime acknowledges and sends it once per batch; the poll thread folds
/// what arrived since its last round and stores the offsets once.
#[derive(Debug, Default)]
struct Acks(Vec<(u32, u64, u64)>);

impl Acks {
    fn add(&mut self, partition: u32, generation: u64, offset: u64) {
        match self.0.iter_mut().find(|a| a.0 == partition && a.1 == generation) {
            Some(ack) => ack.2 = ack.2.max(offset),
            None => self.0.push((partition, generation, offset)),
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What the handle asks the poll thread to do. Each carries the partition's generation; the
/// thread ignores requests about an assignment that has since changed.
enum Command {
    Hold {
        partition: u32,
        generation: u64,
    },
    Resume {
        partition: u32,
        generation: u64,
    },
    Close(oneshot::Sender<Result<(), BackendError>>),
    /// From the main consumer this one follows (`backend/follow.rs`).
    Follow(Following),
}

/// How a consumer gets its partitions.
pub(crate) enum Membership {
    /// It joins its group, and those that follow it read what it is assigned.
    Joins(Option<Arc<Followers>>),
    /// It reads what a main consumer is assigned (`backend/follow.rs`).
    Follows,
}

/// Per partition number: partitions are small dense numbers, so a vector, not a hash map, on
/// the per-record path.
struct ByPartition<T>(Vec<Option<T>>);

impl<T> Default for ByPartition<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T> ByPartition<T> {
    fn get(&self, partition: u32) -> Option<&T> {
        self.0.get(partition as usize).and_then(Option::as_ref)
    }

    fn get_mut(&mut self, partition: u32) -> Option<&mut T> {
        self.0.get_mut(partition as usize).and_then(Option::as_mut)
    }

    fn insert(&mut self, partition: u32, value: T) {
        let index = partition as usize;
        if index >= self.0.len() {
            self.0.resize_with(index + 1, || None);
        }
        self.0[index] = Some(value);
    }

    fn remove(&mut self, partition: u32) {
        if let Some(slot) = self.0.get_mut(partition as usize) {
            *slot = None;
        }
    }

    fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.0
            .iter()
            .enumerate()
            .filter_map(|(p, v)| v.as_ref().map(|v| (p as u32, v)))
    }
}

/// The handle's view of one assigned partition.
#[derive(Default)]
struct PartitionView {
    generation: u64,
    /// Held: records from this offset on are parked until the resume.
    held_from: Option<u64>,
    /// Records fetched before or while the partition was held, in offset order.
    parked: VecDeque<Record>,
}

/// A member of a Kafka consumer group reading one topic.
pub struct KafkaConsumer {
    items: mpsc::Receiver<Vec<Item>>,
    /// The batch being delivered; emptied, it goes back to the poll thread to be filled again.
    buffer: VecDeque<Item>,
    emptied: std_mpsc::Sender<Vec<Item>>,
    /// Parked records of resumed partitions, delivered before anything else.
    ready: VecDeque<Record>,
    commands: std_mpsc::Sender<Command>,
    partitions: ByPartition<PartitionView>,
    /// Acknowledgements not yet sent to the poll thread.
    acks: Acks,
    /// Where they go: a channel of their own, which the revoke callback drains.
    acks_out: std_mpsc::Sender<Acks>,
    acked_since_flush: usize,
    /// The poll thread asks for the acknowledgements held here (to commit, or on a revoke).
    ack_request: Arc<AckRequest>,
    /// Set by the poll thread while settled work waits past its bound for a commit.
    commits_behind: Arc<AtomicBool>,
    /// Set by the poll thread: records of a generation below it belong to an assignment gone.
    stale_below: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
    topic: String,
    /// Produces hand-offs (to this cluster or the retry cluster).
    kafka: Kafka,
    /// Where the producer's delivery reports complete this consumer's hand-offs.
    hand_offs: HandOffReports,
    /// Exactly-once: the transaction this consumer's hand-offs go into.
    transaction: Option<Arc<Transaction>>,
}

impl KafkaConsumer {
    pub(crate) fn start(
        backend: Kafka,
        brokers: &str,
        subscription: Subscription,
        properties: &[(String, String)],
        commits: CommitPolicy,
        membership: Membership,
        exactly_once: Option<&ClientConfig>,
    ) -> Result<Self, BackendError> {
        let name = subscription.topic.name.to_string();
        let transaction = exactly_once
            .map(|producer| Transaction::start(producer, &subscription.group, &name).map(Arc::new))
            .transpose()
            .map_err(transport)?;
        let ack_request = Arc::new(AckRequest::default());
        let (acks_out, acks_in) = std_mpsc::channel();
        let commits_behind = Arc::new(AtomicBool::new(false));
        let stale_below = Arc::new(AtomicU64::new(0));
        let context = RebalanceLog::new(
            name.clone(),
            ack_request.clone(),
            Settlement::new(acks_in, transaction.is_none()),
            commits_behind.clone(),
            stale_below.clone(),
            match &membership {
                Membership::Joins(followers) => followers.clone(),
                Membership::Follows => None,
            },
            transaction
                .clone()
                .map(|transaction| Committer::start(transaction, &name))
                .transpose()
                .map_err(transport)?,
        );
        let mut config = config(brokers, &subscription.group, properties);
        if transaction.is_some() {
            // The transaction commits the offsets; only what is committed is read (retry levels
            // are written in transactions; librdkafka's default, said here).
            config
                .set("enable.auto.commit", "false")
                .set("isolation.level", "read_committed");
        }
        let consumer: RawConsumer = config
            // After the user's properties: the committed offsets are read from them.
            .set(
                "statistics.interval.ms",
                commits::STATS_INTERVAL.as_millis().to_string(),
            )
            .create_with_context(context)
            .map_err(transport)?;
        if let Membership::Joins(_) = membership {
            consumer.subscribe(&[&name]).map_err(transport)?;
        }
        let (items_tx, items) = mpsc::channel(CHANNEL_BATCHES);
        let (commands, commands_rx) = std_mpsc::channel();
        let (emptied, emptied_rx) = std_mpsc::channel();
        let topic = name.clone();
        let kafka = backend.clone();
        let thread = std::thread::Builder::new()
            .name(format!("rk-poll-{name}"))
            .spawn(move || {
                PollThread::new(name, items_tx, emptied_rx, commands_rx, commits).run(consumer);
                // Only now may an embedded cluster go: its clients are closed.
                drop(backend);
            })
            .map_err(transport)?;
        Ok(Self {
            items,
            buffer: VecDeque::new(),
            emptied,
            ready: VecDeque::new(),
            commands,
            partitions: ByPartition::default(),
            acks: Acks::default(),
            acks_out,
            acked_since_flush: 0,
            ack_request,
            commits_behind,
            stale_below,
            thread: Some(thread),
            topic,
            kafka,
            hand_offs: HandOffReports::new(),
            transaction,
        })
    }

    /// Makes this consumer (started with [`Membership::Follows`]) one of `followers`: it reads
    /// what their main consumer is assigned.
    pub(crate) fn follow(&self, followers: &Followers) {
        let commands = self.commands.clone();
        followers.add(move |word| commands.send(Command::Follow(word)).is_ok());
    }

    fn command(&mut self, command: Command) {
        // Acknowledgements go first, in the order they were made.
        self.flush_acks();
        // The thread only stops after Close or when the handle is gone; a send error here means
        // it died, which `next` reports.
        let _ = self.commands.send(command);
    }

    /// Hands the folded acknowledgements to the poll thread: once per batch of records, not
    /// once per message, or when it asks for them.
    fn flush_acks(&mut self) {
        self.acked_since_flush = 0;
        if !self.acks.is_empty() {
            let _ = self.acks_out.send(std::mem::take(&mut self.acks));
        }
        self.ack_request.answered();
    }

    /// The generation `partition` is read in by this handle (0 when it is not): a write into
    /// the transaction carries it, and the transaction refuses one of a partition no longer
    /// read in it.
    fn generation_of(&self, partition: u32) -> u64 {
        self.partitions.get(partition).map_or(0, |view| view.generation)
    }
}

impl Consumer for KafkaConsumer {
    async fn next(&mut self) -> Result<Fetched, BackendError> {
        loop {
            if let Some(record) = self.ready.pop_front() {
                return Ok(Fetched::Record(record));
            }
            while let Some(item) = self.buffer.pop_front() {
                match item {
                    Item::Record { generation, record } => {
                        let Some(view) = self.partitions.get_mut(record.partition) else {
                            continue;
                        };
                        // The one load per record: the assignment was lost after it was sent.
                        if view.generation != generation
                            || generation < self.stale_below.load(Ordering::Relaxed)
                        {
                            continue;
                        }
                        match view.held_from {
                            None => return Ok(Fetched::Record(record)),
                            Some(from) if record.offset >= from => view.parked.push_back(record),
                            // Delivered already: the runtime keeps what it was given.
                            Some(_) => {}
                        }
                    }
                    Item::Assigned(assigned) => {
                        for &(partition, generation) in &assigned {
                            self.ready.retain(|r| r.partition != partition);
                            self.partitions.insert(
                                partition,
                                PartitionView {
                                    generation,
                                    ..PartitionView::default()
                                },
                            );
                        }
                        return Ok(Fetched::Assigned(assigned.into_iter().map(|(p, _)| p).collect()));
                    }
                    Item::Revoked(revoked) => {
                        for partition in &revoked {
                            self.partitions.remove(*partition);
                        }
                        self.ready.retain(|r| !revoked.contains(&r.partition));
                        return Ok(Fetched::Revoked(revoked));
                    }
                }
            }
            // The runtime has had every record fetched so far: send what it acknowledged.
            self.flush_acks();
            match self.items.recv().await {
                Some(batch) => {
                    // Taken as it is (a `Vec` becomes a `VecDeque` without a copy); the empty
                    // one goes back.
                    let emptied = std::mem::replace(&mut self.buffer, VecDeque::from(batch));
                    if emptied.capacity() > 0 {
                        let _ = self.emptied.send(Vec::from(emptied));
                    }
                }
                None => {
                    return Err(BackendError::ConsumerStopped {
                        topic: self.topic.clone(),
                        source: "its poll thread ended".into(),
                    })
                }
            }
        }
    }

    fn hand_off(&mut self, id: HandOffId, from: Position, to: Topic, record: OutboundRecord) {
        match &self.transaction {
            Some(transaction) => {
                let generation = self.generation_of(from.partition);
                transaction.hand_off(id, from, generation, to, record, &self.hand_offs);
            }
            None => self.kafka.hand_off(id, &to, record, &self.hand_offs),
        }
    }

    fn hand_off_reports(&self) -> &HandOffReports {
        &self.hand_offs
    }

    fn writes_outputs(&self) -> bool {
        true
    }

    fn emit(&mut self, id: HandOffId, from: Position, outputs: Vec<Output>) {
        match &self.transaction {
            Some(transaction) => {
                let generation = self.generation_of(from.partition);
                transaction.emit(id, from, generation, outputs, &self.hand_offs);
            }
            None => self.kafka.emit(id, outputs, &self.hand_offs),
        }
    }

    /// Pauses fetching the partition. Records of it from `offset` on that were fetched already
    /// stay parked here and come first after the resume: nothing is fetched twice.
    fn hold(&mut self, partition: u32, offset: u64) {
        let Some(view) = self.partitions.get_mut(partition) else {
            return;
        };
        if view.held_from.is_none() {
            // Resumed records not delivered yet go back in front of the parked ones.
            let (mine, others): (VecDeque<Record>, VecDeque<Record>) = std::mem::take(&mut self.ready)
                .into_iter()
                .partition(|r| r.partition == partition);
            self.ready = others;
            let mut parked = mine;
            parked.append(&mut view.parked);
            view.parked = parked;
        }
        view.parked.retain(|r| r.offset >= offset);
        view.held_from = Some(offset);
        let generation = view.generation;
        self.command(Command::Hold {
            partition,
            generation,
        });
    }

    fn resume(&mut self, partition: u32) {
        let Some(view) = self.partitions.get_mut(partition) else {
            return;
        };
        if view.held_from.take().is_none() {
            return;
        }
        self.ready.append(&mut view.parked);
        let generation = view.generation;
        self.command(Command::Resume {
            partition,
            generation,
        });
    }

    /// Folded here and sent to the poll thread with the next batch (or every `ACK_FLUSH`
    /// acknowledgements, or when the thread asks, or before any other command or close); the
    /// thread stores the offsets for the next commit.
    async fn ack(&mut self, partition: u32, offset: u64) -> Result<(), BackendError> {
        if let Some(view) = self.partitions.get(partition) {
            self.acks.add(partition, view.generation, offset);
            self.acked_since_flush += 1;
            if self.acked_since_flush >= ACK_FLUSH || self.ack_request.is_raised() {
                self.flush_acks();
            }
        }
        Ok(())
    }

    /// Past [`KafkaBuilder::at_risk_limit`](crate::backend::kafka::KafkaBuilder::at_risk_limit)
    /// or [`at_risk_records`](crate::backend::kafka::KafkaBuilder::at_risk_records) without a
    /// commit reported: the poll thread watches the commits' outcomes.
    fn commits_behind(&self) -> bool {
        self.commits_behind.load(Ordering::Relaxed)
    }

    async fn close(mut self) -> Result<(), BackendError> {
        let (reply, done) = oneshot::channel();
        self.command(Command::Close(reply));
        let result = done
            .await
            .unwrap_or_else(|_| Err(transport("the poll thread stopped before closing")));
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        result
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        if self.thread.is_some() {
            // Not closed (the task was aborted): ask the thread to commit and leave; it ends by
            // itself shortly after.
            let (reply, _) = oneshot::channel();
            self.command(Command::Close(reply));
        }
    }
}
