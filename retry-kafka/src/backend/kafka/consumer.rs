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

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};

use super::{transport, Kafka};
use crate::backend::{Consumer, Fetched, HandOff, OutboundRecord, Position, Record, Subscription, Topic};
use crate::error::BackendError;

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

/// A fetched message as a [`Record`] (one copy out of librdkafka's buffer).
pub(crate) fn record_of(message: &BorrowedMessage<'_>) -> Record {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        Bytes::copy_from_slice(h.value.unwrap_or_default()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Record {
        partition: message.partition() as u32,
        offset: message.offset() as u64,
        timestamp_ms: message.timestamp().to_millis(),
        key: message.key().map(Bytes::copy_from_slice),
        payload: message.payload().map(Bytes::copy_from_slice),
        headers,
    }
}

pub(crate) fn config(brokers: &str, group: &str, properties: &[(String, String)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
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
    Hold { partition: u32, generation: u64 },
    Resume { partition: u32, generation: u64 },
    Acks(Acks),
    Close(oneshot::Sender<Result<(), BackendError>>),
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
    buffer: VecDeque<Item>,
    /// Parked records of resumed partitions, delivered before anything else.
    ready: VecDeque<Record>,
    commands: std_mpsc::Sender<Command>,
    partitions: ByPartition<PartitionView>,
    /// Acknowledgements not yet sent to the poll thread.
    acks: Acks,
    acked_since_flush: usize,
    thread: Option<JoinHandle<()>>,
    topic: String,
    /// Produces hand-offs (to this cluster or the retry cluster).
    kafka: Kafka,
}

impl KafkaConsumer {
    pub(crate) fn start(
        backend: Kafka,
        brokers: &str,
        subscription: Subscription,
        properties: &[(String, String)],
    ) -> Result<Self, BackendError> {
        let name = subscription.topic.name.to_string();
        let context = RebalanceLog {
            topic: name.clone(),
            events: Mutex::new(Vec::new()),
            pending: AtomicBool::new(false),
        };
        let consumer: BaseConsumer<RebalanceLog> = config(brokers, &subscription.group, properties)
            .create_with_context(context)
            .map_err(transport)?;
        consumer.subscribe(&[&name]).map_err(transport)?;
        let (items_tx, items) = mpsc::channel(CHANNEL_BATCHES);
        let (commands, commands_rx) = std_mpsc::channel();
        let topic = name.clone();
        let kafka = backend.clone();
        let thread = std::thread::Builder::new()
            .name(format!("rk-poll-{name}"))
            .spawn(move || {
                PollThread::new(name, items_tx, commands_rx).run(consumer);
                // Only now may an embedded cluster go: its clients are closed.
                drop(backend);
            })
            .map_err(transport)?;
        Ok(Self {
            items,
            buffer: VecDeque::new(),
            ready: VecDeque::new(),
            commands,
            partitions: ByPartition::default(),
            acks: Acks::default(),
            acked_since_flush: 0,
            thread: Some(thread),
            topic,
            kafka,
        })
    }

    fn command(&mut self, command: Command) {
        // Acknowledgements go first, in the order they were made.
        self.flush_acks();
        // The thread only stops after Close or when the handle is gone; a send error here means
        // it died, which `next` reports.
        let _ = self.commands.send(command);
    }

    /// Hands the folded acknowledgements to the poll thread: once per batch of records, not
    /// once per message.
    fn flush_acks(&mut self) {
        self.acked_since_flush = 0;
        if !self.acks.is_empty() {
            let _ = self.commands.send(Command::Acks(std::mem::take(&mut self.acks)));
        }
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
                        if view.generation != generation {
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
                Some(batch) => self.buffer.extend(batch),
                None => {
                    return Err(BackendError::ConsumerStopped {
                        topic: self.topic.clone(),
                        source: "its poll thread ended".into(),
                    })
                }
            }
        }
    }

    fn hand_off(&mut self, _from: Position, to: Topic, record: OutboundRecord) -> HandOff {
        Box::pin(self.kafka.produce(&to, &record))
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
    /// acknowledgements, or before any other command or close); the thread stores the offsets
    /// for the next commit.
    async fn ack(&mut self, partition: u32, offset: u64) -> Result<(), BackendError> {
        if let Some(view) = self.partitions.get(partition) {
            self.acks.add(partition, view.generation, offset);
            self.acked_since_flush += 1;
            if self.acked_since_flush >= ACK_FLUSH {
                self.flush_acks();
            }
        }
        Ok(())
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

/// Collects rebalance events raised inside `poll`, so the thread can put them in order with
/// the records.
struct RebalanceLog {
    topic: String,
    events: Mutex<Vec<RebalanceEvent>>,
    /// Whether `events` has something: checked after every poll without taking the lock.
    pending: AtomicBool,
}

enum RebalanceEvent {
    Assigned(Vec<u32>),
    Revoked(Vec<u32>),
}

impl RebalanceLog {
    fn log(&self, event: RebalanceEvent) {
        self.events.lock().expect("never poisoned").push(event);
        self.pending.store(true, Ordering::Release);
    }

    fn take(&self) -> Vec<RebalanceEvent> {
        if !self.pending.swap(false, Ordering::Acquire) {
            return Vec::new();
        }
        std::mem::take(&mut *self.events.lock().expect("never poisoned"))
    }

    fn partitions(&self, list: &TopicPartitionList) -> Vec<u32> {
        list.elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .map(|e| e.partition() as u32)
            .collect()
    }
}

impl ClientContext for RebalanceLog {}

impl ConsumerContext for RebalanceLog {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            // Commit what was acknowledged before the partitions go to another member.
            if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(topic = %self.topic, %error, "commit on revoke");
            }
            let revoked = self.partitions(list);
            tracing::debug!(topic = %self.topic, ?revoked, "partitions revoked");
            self.log(RebalanceEvent::Revoked(revoked));
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let assigned = self.partitions(list);
                tracing::debug!(topic = %self.topic, ?assigned, "partitions assigned");
                self.log(RebalanceEvent::Assigned(assigned));
            }
            Rebalance::Error(error) => tracing::warn!(topic = %self.topic, %error, "rebalance failed"),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// The poll thread's view of one assigned partition.
struct Assigned {
    generation: u64,
    /// Paused by the runtime until resumed.
    held: bool,
    /// The offset after the last record handed to the runtime.
    next: Option<u64>,
}

type RawConsumer = BaseConsumer<RebalanceLog>;

struct PollThread {
    topic: String,
    items: mpsc::Sender<Vec<Item>>,
    commands: std_mpsc::Receiver<Command>,
    partitions: ByPartition<Assigned>,
    generations: u64,
    /// A batch the runtime had no room for yet.
    pending: Option<Vec<Item>>,
    /// Partitions paused because the runtime is behind (not because of a hold).
    backpressure: bool,
    /// Since when the runtime has had no room for records.
    behind_since: Option<std::time::Instant>,
}

impl PollThread {
    fn new(topic: String, items: mpsc::Sender<Vec<Item>>, commands: std_mpsc::Receiver<Command>) -> Self {
        Self {
            topic,
            items,
            commands,
            partitions: ByPartition::default(),
            generations: 0,
            pending: None,
            backpressure: false,
            behind_since: None,
        }
    }

    fn run(mut self, consumer: RawConsumer) {
        loop {
            if let Err(reply) = self.drain_commands(&consumer) {
                return self.close(consumer, reply);
            }
            if let Some(batch) = self.pending.take() {
                // The runtime is behind. Wait a little for room; if it stays behind, pause
                // fetching but keep polling, so the member stays in its group.
                let unsent = match wait_for_room(&self.items, POLL_WAIT) {
                    Room::Ready(permit) => {
                        permit.send(batch);
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
            let mut batch = Vec::new();
            self.poll_batch(&consumer, POLL_WAIT, &mut batch);
            if !batch.is_empty() {
                self.pending = Some(batch);
            }
        }
    }

    /// Applies every queued command; acknowledgements are folded into one offset store per
    /// round. Returns the reply channel of a close request.
    fn drain_commands(
        &mut self,
        consumer: &RawConsumer,
    ) -> Result<(), oneshot::Sender<Result<(), BackendError>>> {
        let mut acks = Acks::default();
        let result = loop {
            match self.commands.try_recv() {
                Ok(Command::Close(reply)) => break Err(reply),
                Ok(Command::Acks(Acks(received))) => {
                    for (partition, generation, offset) in received {
                        acks.add(partition, generation, offset);
                    }
                }
                Ok(command) => self.apply(consumer, command),
                Err(std_mpsc::TryRecvError::Empty) => break Ok(()),
                // The handle is gone without closing: commit and leave anyway.
                Err(std_mpsc::TryRecvError::Disconnected) => break Err(oneshot::channel().0),
            }
        };
        // Acknowledgements of an assignment that has since changed are stale.
        acks.0
            .retain(|&(partition, generation, _)| self.current(partition, generation).is_some());
        if !acks.is_empty() {
            let mut list = TopicPartitionList::with_capacity(acks.0.len());
            for &(partition, _, offset) in &acks.0 {
                // The committed offset is the next one to read.
                let _ = list.add_partition_offset(
                    &self.topic,
                    partition as i32,
                    Offset::Offset(offset as i64 + 1),
                );
            }
            if let Err(error) = consumer.store_offsets(&list) {
                tracing::warn!(topic = %self.topic, ?acks, %error, "storing offsets failed");
            }
        }
        result
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
                Some(Ok(message)) => self.push_record(&message, batch),
                Some(Err(error)) => {
                    tracing::warn!(topic = %self.topic, %error, "consumer error; librdkafka retries");
                    break;
                }
            }
            wait = Duration::ZERO;
        }
    }

    fn take_rebalances(&mut self, consumer: &RawConsumer, batch: &mut Vec<Item>) {
        let events = consumer.context().take();
        for event in events {
            match event {
                RebalanceEvent::Revoked(revoked) => {
                    for partition in &revoked {
                        self.partitions.remove(*partition);
                    }
                    if let Some(pending) = &mut self.pending {
                        pending.retain(|item| !matches!(item, Item::Record { record, .. } if revoked.contains(&record.partition)));
                    }
                    batch.retain(|item| !matches!(item, Item::Record { record, .. } if revoked.contains(&record.partition)));
                    batch.push(Item::Revoked(revoked));
                }
                RebalanceEvent::Assigned(assigned) => {
                    let mut tagged = Vec::with_capacity(assigned.len());
                    for partition in assigned {
                        self.generations += 1;
                        let generation = self.generations;
                        self.partitions.insert(
                            partition,
                            Assigned {
                                generation,
                                held: false,
                                next: None,
                            },
                        );
                        tagged.push((partition, generation));
                    }
                    // A partition may come back paused from an earlier assignment; start fresh,
                    // unless the runtime is behind.
                    let partitions: Vec<u32> = tagged.iter().map(|(p, _)| *p).collect();
                    if self.backpressure {
                        self.pause(consumer, &partitions);
                    } else {
                        self.resume(consumer, &partitions);
                    }
                    batch.push(Item::Assigned(tagged));
                }
            }
        }
    }

    fn push_record(&mut self, message: &BorrowedMessage<'_>, batch: &mut Vec<Item>) {
        let partition = message.partition() as u32;
        let Some(assigned) = self.partitions.get_mut(partition) else {
            return;
        };
        let record = record_of(message);
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
                if !self.backpressure {
                    self.resume_at(consumer, partition, next);
                }
            }
            Command::Acks(_) => unreachable!("folded by drain_commands"),
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

    fn close(self, consumer: RawConsumer, reply: oneshot::Sender<Result<(), BackendError>>) {
        // Other members of the group (the other levels) may be leaving at the same moment; a
        // commit during their rebalance is refused, so keep serving the group and try again.
        let deadline = std::time::Instant::now() + CLOSE_COMMIT_LIMIT;
        let committed = loop {
            match consumer.commit_consumer_state(CommitMode::Sync) {
                // Nothing stored since the last commit is not a failure.
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => break Ok(()),
                Err(KafkaError::ConsumerCommit(code))
                    if retriable(code) && std::time::Instant::now() < deadline =>
                {
                    tracing::debug!(topic = %self.topic, %code, "commit on close refused; retrying");
                    let _ = consumer.poll(Duration::from_millis(50));
                }
                Err(error) => break Err(transport(error)),
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
