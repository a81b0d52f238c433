//! Exactly-once hand-offs ([`KafkaBuilder::exactly_once`]): a consumer's own transactional
//! producer, whose hand-offs and the offsets of the records they conclude commit in one Kafka
//! transaction, sent with the consumer's group metadata (KIP-447: the group's generation fences
//! a member that lost its partitions, so its transaction cannot commit).
//!
//! The poll thread commits (every commit interval, on a revoke, on close): it closes the gate
//! (hand-offs made meanwhile wait, in order, and go into the next transaction), sends the
//! acknowledged prefix of each partition as its offset with the records written above it as
//! metadata (`written.rs`), commits, begins the next and opens the gate. A hand-off is sent only
//! for a partition this member reads in the generation its record came from: one of a revoked
//! partition, or of a transaction aborted since, is refused (its new reader runs the record).
//! One accepted (a failure's record, or a successful attempt's outputs) is reported as written
//! at once: it is durable when its transaction commits, with its source's offset, and a write
//! that fails fails that commit. So neither a delivery report nor a commit under way holds the
//! runtime's window of hand-offs.
//!
//! An abort (a write failed, the transaction timed out, the member was fenced) takes back every
//! hand-off and offset since the last commit: the gate forgets its partitions, and the poll
//! thread reads them again from their committed offsets (`poll/assignment.rs`, a rewind). A fatal error
//! (the producer fenced by another with its id) makes a new producer.
//!
//! [`KafkaBuilder::exactly_once`]: crate::backend::kafka::KafkaBuilder::exactly_once

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer as _, ConsumerGroupMetadata};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer as _;
use rdkafka::{Offset, TopicPartitionList};

use super::poll::RawConsumer;
use super::written::{Written, METADATA_LIMIT};
use super::ByPartition;
use crate::backend::kafka::transport;
use crate::backend::kafka::writer::Writer;
use crate::backend::{HandOffId, HandOffReports, OutboundRecord, Output, Position, Topic, Undelivered};

/// How long a transaction's call (init, offsets, commit, abort) may take: a call that waits
/// longer than the transaction's own timeout (10 s here unless set) is for a transaction the
/// broker aborts anyway. The poll thread waits for it; librdkafka keeps the member in its group
/// meanwhile.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// `transaction.timeout.ms` unless the producer's properties set it.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times a call that failed with a retriable error is made again.
const RETRIES: usize = 3;
/// The shortest a call may be given once the consumer closes, so it is still made.
const LEAST_CALL: Duration = Duration::from_millis(100);

/// A consumer's transactional producer and what its open transaction holds.
pub(super) struct Transaction {
    /// The source topic, whose offsets the transaction commits.
    topic: String,
    /// The producer's settings, to make a new one after a fatal error.
    config: ClientConfig,
    gate: Mutex<Gate>,
    /// Once the consumer closes, when every call to the broker must be over (with the broker
    /// or its coordinator gone, calls and their retries would take minutes: the broker aborts
    /// an open transaction by its timeout anyway).
    closing_by: Mutex<Option<Instant>>,
}

struct Gate {
    writer: Arc<Writer>,
    /// A transaction is open and not committing: hand-offs go in now, else they wait.
    open: bool,
    /// Hand-offs made while the gate was closed, in the order made.
    queued: Vec<Queued>,
    /// The partitions this member reads, in the generation whose records may hand off.
    partitions: ByPartition<Owned>,
    /// Something was written since the transaction began.
    wrote: bool,
    /// librdkafka refused a write (reported as written already, and maybe only part of an
    /// attempt's outputs): the transaction must abort, not commit.
    broken: bool,
}

struct Owned {
    generation: u64,
    /// The records at or above the committed offset whose hand-offs are written.
    written: Written,
    /// The offset last committed (or read at the assignment).
    committed: Option<u64>,
}

/// A write that waits for the gate to open (reported as written already).
struct Queued {
    from: Position,
    generation: u64,
    carried: Carried,
}

/// What a write puts into the transaction: a failure's hand-off, or a successful attempt's
/// outputs (all of them, in one go: a commit never splits them).
enum Carried {
    HandOff(Topic, OutboundRecord),
    Outputs(Vec<Output>),
}

impl Carried {
    /// The record a refusal gives back (none for outputs: the runtime keeps its own copy).
    fn given_back(self) -> OutboundRecord {
        match self {
            Carried::HandOff(_, record) => record,
            Carried::Outputs(_) => OutboundRecord::default(),
        }
    }
}

/// What a commit sends, taken from the gate by the poll thread.
pub(super) struct Ready {
    writer: Arc<Writer>,
    offsets: TopicPartitionList,
    group: Option<ConsumerGroupMetadata>,
    through: Vec<(u32, u64)>,
    leaving: Vec<u32>,
}

/// How a commit went.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Committed {
    /// These partitions are committed through these offsets (the next to read).
    Through(Vec<(u32, u64)>),
    /// Nothing moved since the last commit: the transaction stays open.
    Nothing,
    /// A partition's map of written records is longer than a commit's metadata may be: the
    /// transaction stays open until its acknowledged prefix catches up.
    Waits,
    /// Aborted: everything since the last commit is taken back; the partitions kept must be
    /// read again from their committed offsets.
    Aborted,
}

impl Transaction {
    /// A transactional producer for the consumer of `topic` in `group`, its first transaction
    /// begun. `config` is the cluster's producer settings.
    pub(super) fn start(config: &ClientConfig, group: &str, topic: &str) -> Result<Self, KafkaError> {
        let mut config = config.clone();
        config.set("transactional.id", transactional_id(group, topic));
        if config.get("transaction.timeout.ms").is_none() {
            // A process killed mid-transaction leaves it open until this passes (its id dies
            // with it, so no successor fences it sooner), and read_committed readers of what
            // it wrote wait as long: Kafka Streams' exactly-once default, not the 60 s of
            // librdkafka's.
            config.set(
                "transaction.timeout.ms",
                TRANSACTION_TIMEOUT.as_millis().to_string(),
            );
        }
        // librdkafka refuses a delivery timeout past the transaction's.
        let limit = config
            .get("transaction.timeout.ms")
            .and_then(|ms| ms.parse::<u64>().ok());
        let delivery = config
            .get("message.timeout.ms")
            .and_then(|ms| ms.parse::<u64>().ok());
        if let (Some(limit), Some(delivery)) = (limit, delivery) {
            if delivery > limit {
                config.set("message.timeout.ms", limit.to_string());
            }
        }
        let writer = begun(&config, &|| None)?;
        Ok(Self {
            topic: topic.to_owned(),
            config,
            gate: Mutex::new(Gate {
                writer: Arc::new(writer),
                open: true,
                queued: Vec::new(),
                partitions: ByPartition::default(),
                wrote: false,
                broken: false,
            }),
            closing_by: Mutex::new(None),
        })
    }

    /// From now on every call to the broker ends by `deadline` (the consumer closes).
    pub(super) fn close_by(&self, deadline: Instant) {
        *self
            .closing_by
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(deadline);
    }

    fn closing_by(&self) -> Option<Instant> {
        *self
            .closing_by
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn gate(&self) -> MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a hand-off of the record at `from` (of assignment `generation`) into the open
    /// transaction, or after it when the gate is closed; refused when the partition is no
    /// longer read in that generation.
    pub(super) fn hand_off(
        &self,
        id: HandOffId,
        from: Position,
        generation: u64,
        to: Topic,
        record: OutboundRecord,
        reports: &HandOffReports,
    ) {
        self.put(id, from, generation, Carried::HandOff(to, record), reports);
    }

    /// Queues a successful attempt's `outputs` (of the record at `from`, of assignment
    /// `generation`) into the open transaction, as [`hand_off`](Transaction::hand_off) does
    /// a failure's record; reported as `id` once the last is written.
    pub(super) fn emit(
        &self,
        id: HandOffId,
        from: Position,
        generation: u64,
        outputs: Vec<Output>,
        reports: &HandOffReports,
    ) {
        self.put(id, from, generation, Carried::Outputs(outputs), reports);
    }

    /// A write accepted for the open transaction (now, or when the gate opens) is reported
    /// as written at once: in a transaction a record is durable when it commits, with its
    /// source's offset, and a write that fails fails that commit (librdkafka's transaction
    /// then only aborts), which takes both back. So no hand-off waits for its delivery
    /// report or for a commit under way, and the runtime's window never fills with them.
    fn put(
        &self,
        id: HandOffId,
        from: Position,
        generation: u64,
        carried: Carried,
        reports: &HandOffReports,
    ) {
        let accepted = {
            let mut gate = self.gate();
            if !gate.reads(from.partition, generation) {
                Err(carried)
            } else {
                if gate.open {
                    gate.write(from, carried);
                } else {
                    gate.queued.push(Queued {
                        from,
                        generation,
                        carried,
                    });
                }
                Ok(())
            }
        };
        match accepted {
            Ok(()) => reports.report(id, Ok(from)),
            Err(carried) => reports.report(id, Err(stale(carried.given_back()))),
        }
    }

    /// This member reads `partition` in `generation`, committed through `committed` (if ever)
    /// with `written` above it.
    pub(super) fn assigned(&self, partition: u32, generation: u64, committed: Option<u64>, written: Written) {
        self.gate().partitions.insert(
            partition,
            Owned {
                generation,
                written,
                committed,
            },
        );
    }

    /// Commits the open transaction here and now: hand-offs written so far and, per
    /// partition, `floors` (the acknowledged prefix: the next offset to read) with the records
    /// written above it. `leaving` are given up after the commit: their hand-offs waiting are
    /// refused.
    pub(super) fn commit(&self, consumer: &RawConsumer, floors: &[(u32, u64)], leaving: &[u32]) -> Committed {
        match self.prepare(consumer, floors, leaving) {
            Ok(ready) => self.finish(ready),
            Err(outcome) => outcome,
        }
    }

    /// The poll thread's part of a commit: closes the gate and takes what to commit (the
    /// offsets with their written maps, the group's metadata). `Err` when there is nothing to
    /// commit, or it cannot be (with what that means).
    pub(super) fn prepare(
        &self,
        consumer: &RawConsumer,
        floors: &[(u32, u64)],
        leaving: &[u32],
    ) -> Result<Ready, Committed> {
        let mut gate = self.gate();
        let mut offsets = TopicPartitionList::with_capacity(floors.len());
        let mut through = Vec::new();
        let mut too_long = false;
        let wrote = gate.wrote;
        for &(partition, floor) in floors {
            let Some(owned) = gate.partitions.get_mut(partition) else {
                continue;
            };
            if owned.committed == Some(floor) && !wrote {
                continue;
            }
            let metadata = owned.written.encode(floor);
            too_long |= metadata.len() > METADATA_LIMIT;
            let added =
                offsets.add_partition_offset(&self.topic, partition as i32, Offset::Offset(floor as i64));
            if added.is_ok() {
                if let Some(mut element) = offsets.find_partition(&self.topic, partition as i32) {
                    element.set_metadata(metadata);
                }
                through.push((partition, floor));
            }
        }
        if through.is_empty() && !wrote {
            gate.leave(leaving);
            return Err(Committed::Nothing);
        }
        // A handler's outputs written in part (the rest refused), or partitions going that must
        // commit now and whose written map is too long: everything since the last commit is
        // taken back, and what stays is read again.
        let abort = if gate.broken {
            Some(RDKafkaErrorCode::InvalidTransactionalState)
        } else if too_long && !leaving.is_empty() {
            Some(RDKafkaErrorCode::OffsetMetadataTooLarge)
        } else {
            None
        };
        if let Some(code) = abort {
            tracing::warn!(topic = %self.topic, reason = %code, broken = gate.broken, "aborting the transaction");
            let writer = gate.writer.clone();
            drop(gate);
            self.recover(&writer, KafkaError::ConsumerCommit(code));
            return Err(Committed::Aborted);
        }
        if too_long {
            tracing::debug!(topic = %self.topic, "written records above the acknowledged prefix are too many for a commit's metadata; the transaction stays open");
            gate.leave(leaving);
            return Err(Committed::Waits);
        }
        // Only a consumer without a group.id has none, and every consumer here has one.
        let group = (!through.is_empty()).then(|| consumer.group_metadata()).flatten();
        gate.open = false;
        Ok(Ready {
            writer: gate.writer.clone(),
            offsets,
            group,
            through,
            leaving: leaving.to_vec(),
        })
    }

    /// The rest of a commit, which waits for the broker (on the committer thread, or here):
    /// sends the offsets, commits, begins the next transaction and opens the gate; or recovers.
    pub(super) fn finish(&self, ready: Ready) -> Committed {
        let Ready {
            writer,
            offsets,
            group,
            through,
            leaving,
        } = ready;
        match end(&writer, &offsets, group.as_ref(), &|| self.closing_by()) {
            Ok(()) => {
                let mut gate = self.gate();
                for &(partition, floor) in &through {
                    if let Some(owned) = gate.partitions.get_mut(partition) {
                        owned.committed = Some(floor);
                        owned.written.prune(floor);
                    }
                }
                gate.leave(&leaving);
                gate.wrote = false;
                // Local (no request): it may be made under the lock.
                match writer.producer().begin_transaction() {
                    Ok(()) => {
                        gate.reopen();
                        Committed::Through(through)
                    }
                    Err(error) => {
                        drop(gate);
                        tracing::warn!(topic = %self.topic, %error, "beginning a transaction failed");
                        self.recover(&writer, error);
                        // Committed: the next reader starts after it; what was kept is read again.
                        Committed::Aborted
                    }
                }
            }
            Err(error) => {
                tracing::warn!(topic = %self.topic, %error, "the transaction did not commit; its hand-offs and offsets are taken back and its records read again");
                self.recover(&writer, error);
                Committed::Aborted
            }
        }
    }

    /// After a failed commit or begin: forgets every partition (so every hand-off is refused
    /// until the poll thread has read them again and assigned them anew) and refuses what
    /// waited, then aborts (or, after a fatal error, makes a new producer) and begins again.
    /// The gate's lock is not held while the broker is asked: a hand-off never waits for it.
    fn recover(&self, writer: &Writer, error: KafkaError) {
        {
            let mut gate = self.gate();
            gate.partitions = ByPartition::default();
            gate.wrote = false;
            gate.broken = false;
            gate.open = true;
            // Reported as written, and taken back with the rest: their sources are read again.
            gate.queued.clear();
        }
        let fatal = matches!(&error, KafkaError::Transaction(error) if error.is_fatal());
        let mut again = !fatal;
        if again {
            if let Err(error) = writer
                .producer()
                .abort_transaction(call_timeout(self.closing_by()))
            {
                tracing::warn!(topic = %self.topic, %error, "aborting the transaction failed; making a new producer");
                again = false;
            }
        }
        if again && writer.producer().begin_transaction().is_err() {
            again = false;
        }
        if !again {
            // Fenced, or in a state only a new producer leaves: the new one's init fences this
            // one's transaction (same id) and aborts it.
            match begun(&self.config, &|| self.closing_by()) {
                Ok(writer) => self.gate().writer = Arc::new(writer),
                Err(error) => tracing::error!(topic = %self.topic, %error,
                    "a new transactional producer could not start; hand-offs fail until one does"),
            }
        }
    }
}

impl Gate {
    fn reads(&self, partition: u32, generation: u64) -> bool {
        self.partitions
            .get(partition)
            .is_some_and(|owned| owned.generation == generation)
    }

    fn write(&mut self, from: Position, carried: Carried) {
        if let Some(owned) = self.partitions.get_mut(from.partition) {
            owned.written.insert(from.offset);
        }
        self.wrote = true;
        let written = match carried {
            Carried::HandOff(to, record) => self.writer.write_unwatched(&to, &record),
            // In order, all before the next commit; a refusal ends them (the commit aborts).
            Carried::Outputs(outputs) => outputs
                .iter()
                .try_for_each(|output| self.writer.write_unwatched(&output.topic, &output.record)),
        };
        if let Err(error) = written {
            tracing::warn!(%error, "a write into the transaction was refused; it aborts at its commit");
            self.broken = true;
        }
    }

    fn leave(&mut self, leaving: &[u32]) {
        for &partition in leaving {
            self.partitions.remove(partition);
        }
    }

    /// Opens the gate: the hand-offs that waited go into the new transaction, in order.
    fn reopen(&mut self) {
        for Queued {
            from,
            generation,
            carried,
        } in std::mem::take(&mut self.queued)
        {
            // One of a partition given up meanwhile is dropped: its next reader runs the source.
            if self.reads(from.partition, generation) {
                self.write(from, carried);
            }
        }
        self.open = true;
    }
}

/// When the calls to the broker must end, asked before each (the consumer may start closing
/// while a commit is under way): `None` until it closes.
type Closing<'a> = &'a dyn Fn() -> Option<Instant>;

/// Sends the offsets (with the group's metadata: KIP-447) and commits; calls that failed with
/// a retriable error are made again (not past `closing`).
fn end(
    writer: &Writer,
    offsets: &TopicPartitionList,
    group: Option<&ConsumerGroupMetadata>,
    closing: Closing<'_>,
) -> Result<(), KafkaError> {
    let producer = writer.producer();
    if offsets.count() > 0 {
        let group = group.ok_or(KafkaError::ConsumerCommit(RDKafkaErrorCode::InvalidGroupId))?;
        retried(closing, |timeout| {
            producer.send_offsets_to_transaction(offsets, group, timeout)
        })?;
    }
    retried(closing, |timeout| producer.commit_transaction(timeout))
}

/// A producer with `config` (a `transactional.id` in it), its transactions initialised (which
/// aborts what an earlier producer with the id left open) and the first begun.
fn begun(config: &ClientConfig, closing: Closing<'_>) -> Result<Writer, KafkaError> {
    let writer = Writer::create(config)?;
    retried(closing, |timeout| writer.producer().init_transactions(timeout))?;
    writer.producer().begin_transaction()?;
    Ok(writer)
}

/// How long the next call may take: [`CALL_TIMEOUT`], or what is left until `by`.
fn call_timeout(by: Option<Instant>) -> Duration {
    match by {
        Some(by) => by
            .saturating_duration_since(Instant::now())
            .clamp(LEAST_CALL, CALL_TIMEOUT),
        None => CALL_TIMEOUT,
    }
}

/// `call` (given its timeout), made again while it fails with a retriable error, [`RETRIES`]
/// times at most and not past `closing`.
fn retried(
    closing: Closing<'_>,
    mut call: impl FnMut(Duration) -> Result<(), KafkaError>,
) -> Result<(), KafkaError> {
    let mut tries = 0;
    loop {
        match call(call_timeout(closing())) {
            Err(KafkaError::Transaction(error))
                if error.is_retriable()
                    && tries < RETRIES
                    && closing().is_none_or(|by| Instant::now() < by) =>
            {
                tries += 1
            }
            result => return result,
        }
    }
}

/// A hand-off refused: its partition is no longer read in its record's generation.
fn stale(record: OutboundRecord) -> Undelivered {
    Undelivered::given_up(
        transport("the partition was given up or its transaction aborted: its record is run again from the committed offset"),
        record,
    )
}

/// Unique per producer: with KIP-447 fencing rides on the group's generation, so the id need
/// not be stable across restarts, only never shared by two live producers.
fn transactional_id(group: &str, topic: &str) -> String {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    format!(
        "{group}.{topic}.{}-{nanos:x}-{}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    )
}
