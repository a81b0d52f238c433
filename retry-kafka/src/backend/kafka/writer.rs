//! The cluster's one producer, for hand-offs and [`Publish`](crate::backend::Publish) alike:
//! a librdkafka producer polled by a thread of its own, whose delivery reports complete the
//! writes by slot number.
//!
//! rdkafka's `FutureProducer` allocates a oneshot channel and a boxed sender per record. Here a
//! write is a slot in one table (no allocation per record once the table has grown). A
//! hand-off's slot holds its record (to give back on failure), its id and its consumer's
//! `HandOffReports`: the delivery report pushes the result there, and only the first report
//! after the runtime looked wakes it, so a batch of reports wakes a consumer's task once and
//! no future exists per hand-off. A `Publish` write's slot holds the waker of its future.
//! (rdkafka's `poll` keeps serving reports until its timeout, so waking at the end of a poll
//! round would delay every report by that timeout.)

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Header, Message as _, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _, ProducerContext, PurgeConfig};
use rdkafka::ClientContext;
use slab::Slab;

use super::Refusals;
use crate::backend::{Delivered, HandOffId, HandOffReports, OutboundRecord, Output, Topic, Undelivered};
use crate::error::BackendError;

/// How long one poll of the producer waits for reports; also how long closing waits for the
/// thread to notice.
const POLL_WAIT: Duration = Duration::from_millis(100);
/// How long dropping the writer waits for the reports of what it purged.
const PURGE_REPORTS: Duration = Duration::from_millis(500);

/// The cluster's producer and the thread that polls it for delivery reports.
pub(super) struct Writer {
    producer: Arc<BaseProducer<Reports>>,
    stop: Arc<AtomicBool>,
    poller: Option<JoinHandle<()>>,
}

impl Writer {
    /// Creates the producer from `config` and starts its poll thread.
    pub(super) fn create(config: &ClientConfig) -> Result<Self, KafkaError> {
        let reports = Reports {
            slots: Mutex::default(),
            refusals: Refusals::new("producer"),
        };
        let producer: Arc<BaseProducer<Reports>> = Arc::new(config.create_with_context(reports)?);
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let (producer, stop) = (producer.clone(), stop.clone());
            std::thread::Builder::new()
                .name("rk-producer".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        producer.poll(POLL_WAIT);
                    }
                })
                .map_err(|error| KafkaError::ClientCreation(error.to_string()))?
        };
        Ok(Self {
            producer,
            stop,
            poller: Some(poller),
        })
    }

    /// The producer, for a transaction's calls (`consumer/transaction.rs`).
    pub(super) fn producer(&self) -> &BaseProducer<Reports> {
        &self.producer
    }

    /// Queues `record` for `topic`; the returned future resolves with the broker's
    /// acknowledgement (or why there was none). librdkafka copies what it sends: the caller
    /// keeps `record`.
    pub(super) fn write(&self, topic: &Topic, record: &OutboundRecord) -> Write {
        let slot = self.producer.context().slots().insert(Slot::Waiting(None));
        let state = match self.producer.send(outbound(topic, record, slot)) {
            Ok(()) => State::Queued {
                producer: self.producer.clone(),
                slot,
            },
            Err((error, _)) => {
                self.producer.context().slots().remove(slot);
                State::Refused {
                    producer: self.producer.clone(),
                    error: Some(error),
                }
            }
        };
        Write {
            state,
            // The topic names a delivery error, which comes later: a shared name, not a copy.
            topic: topic.name.clone(),
        }
    }

    /// Queues `record` for `topic` in the open transaction, unwatched: its delivery report only
    /// frees its slot (a record that is not written fails the transaction's commit, which is
    /// what stands for it). `Err` when librdkafka does not queue it.
    pub(super) fn write_unwatched(&self, topic: &Topic, record: &OutboundRecord) -> Result<(), BackendError> {
        let context = self.producer.context();
        let slot = context.slots().insert(Slot::Abandoned);
        self.producer
            .send(outbound(topic, record, slot))
            .map_err(|(error, _)| {
                context.slots().remove(slot);
                context.refusals.explain_write(&topic.name, error)
            })
    }

    /// Queues a successful attempt's `outputs` ([`Consumer::emit`](crate::backend::Consumer::emit)),
    /// in order; reported as `id` into `reports` once each one is written or failed (the
    /// first failure, if any). No slot waits on another: each output's report counts down
    /// their join. Returns whether librdkafka queued every one (a refusal ends the queueing:
    /// the rest are not sent, and the join reports the refusal).
    pub(super) fn emit(&self, id: HandOffId, outputs: Vec<Output>, reports: &HandOffReports) -> bool {
        let context = self.producer.context();
        let join = Arc::new(Joined {
            id,
            reports: reports.clone(),
            state: Mutex::new(JoinState {
                remaining: outputs.len(),
                last: None,
                failed: None,
            }),
        });
        if outputs.is_empty() {
            join.count_down(0, None);
            return true;
        }
        let total = outputs.len();
        for (sent, output) in outputs.iter().enumerate() {
            let slot = context
                .slots()
                .insert(Slot::Joined(join.clone(), output.topic.name.clone()));
            if let Err((error, _)) = self.producer.send(outbound(&output.topic, &output.record, slot)) {
                context.slots().remove(slot);
                let error = context.refusals.explain_write(&output.topic.name, error);
                // This one and the ones after it are never sent.
                join.count_down(total - sent, Some(Err(error)));
                return false;
            }
        }
        true
    }

    /// Queues a hand-off's `record` for `topic`; its delivery report (or librdkafka's refusal
    /// to queue it) is reported as `id` into `reports`, the record given back on failure.
    pub(super) fn hand_off(
        &self,
        id: HandOffId,
        topic: &Topic,
        record: OutboundRecord,
        reports: &HandOffReports,
    ) {
        let context = self.producer.context();
        // The slot is taken first (its number is the report's opaque) and filled after the
        // send: the lock is not held while librdkafka queues the record, or the poll thread's
        // reports would wait for it.
        let slot = context.slots().insert(Slot::Sending);
        if let Err((error, _)) = self.producer.send(outbound(topic, &record, slot)) {
            context.slots().remove(slot);
            let error = context.refusals.explain_write(&topic.name, error);
            return reports.report(id, Err(Undelivered::new(error, record)));
        }
        let pending = PendingHandOff {
            id,
            topic: topic.name.clone(),
            record,
            reports: reports.clone(),
        };
        let mut slots = context.slots();
        match std::mem::replace(&mut slots[slot], Slot::HandOff(pending)) {
            Slot::Sending => {}
            // Reported already, between the send and now: reported here.
            Slot::Done(result) => {
                let Slot::HandOff(pending) = slots.remove(slot) else {
                    unreachable!("put there just now")
                };
                drop(slots);
                pending.report(result, &context.refusals);
            }
            _ => unreachable!("a hand-off's slot is its own"),
        }
    }
}

/// `record` as librdkafka takes it, to `topic`, with `slot` as its delivery opaque.
fn outbound<'a>(
    topic: &'a Topic,
    record: &'a OutboundRecord,
    slot: usize,
) -> BaseRecord<'a, [u8], [u8], usize> {
    let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
    for (name, value) in record.headers.iter() {
        headers = headers.insert(Header {
            key: name,
            value: Some(value),
        });
    }
    let mut outbound = BaseRecord::with_opaque_to(&topic.name, slot).headers(headers);
    if let Some(partition) = record.partition {
        outbound = outbound.partition(partition as i32);
    }
    if let Some(key) = record.key.as_deref() {
        outbound = outbound.key(key);
    }
    if let Some(payload) = record.payload.as_deref() {
        outbound = outbound.payload(payload);
    }
    outbound
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(poller) = self.poller.take() {
            let _ = poller.join();
        }
        // The runtime has finished or given up every hand-off before its backend goes, so
        // what is still queued has no one to acknowledge it: purged, as rdkafka's own producers
        // do on drop, and its reports (errors) complete the writes still waiting, if any.
        self.producer.purge(PurgeConfig::default().queue().inflight());
        if let Err(error) = self.producer.flush(PURGE_REPORTS) {
            tracing::debug!(%error, "reports of purged records did not all come");
        }
    }
}

/// A write waiting for its delivery report, or one librdkafka refused to queue.
pub(super) struct Write {
    state: State,
    topic: Arc<str>,
}

enum State {
    Queued {
        producer: Arc<BaseProducer<Reports>>,
        slot: usize,
    },
    /// librdkafka did not queue it (its queue is full, the topic is unknown).
    Refused {
        producer: Arc<BaseProducer<Reports>>,
        error: Option<KafkaError>,
    },
    Finished,
}

impl Future for Write {
    type Output = Result<Delivered, BackendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let result = match &mut this.state {
            State::Refused { error, .. } => Err(error.take().expect("polled after completion")),
            State::Queued { producer, slot } => {
                let mut slots = producer.context().slots();
                match &mut slots[*slot] {
                    Slot::Done(_) => match slots.remove(*slot) {
                        Slot::Done(result) => result,
                        _ => unreachable!("matched above"),
                    },
                    Slot::Waiting(waker) => {
                        if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                            *waker = Some(cx.waker().clone());
                        }
                        return Poll::Pending;
                    }
                    Slot::Abandoned | Slot::HandOff(_) | Slot::Sending | Slot::Joined(..) => {
                        unreachable!("a write's slot is its own")
                    }
                }
            }
            State::Finished => panic!("polled after completion"),
        };
        let state = std::mem::replace(&mut this.state, State::Finished);
        Poll::Ready(result.map_err(|error| {
            let (State::Queued { producer, .. } | State::Refused { producer, .. }) = state else {
                unreachable!("finished just now")
            };
            producer.context().refusals.explain_write(&this.topic, error)
        }))
    }
}

impl Drop for Write {
    fn drop(&mut self) {
        if let State::Queued { producer, slot } = &self.state {
            let mut slots = producer.context().slots();
            match slots[*slot] {
                // The report comes later and frees the slot.
                Slot::Waiting(_) => slots[*slot] = Slot::Abandoned,
                _ => {
                    slots.remove(*slot);
                }
            }
        }
    }
}

/// One write's place in the table.
enum Slot {
    /// Queued; the waker of the task waiting for it, once it was polled.
    Waiting(Option<Waker>),
    /// Reported, not yet taken.
    Done(Result<Delivered, KafkaError>),
    /// Its write was dropped before the report: the report only frees the slot.
    Abandoned,
    /// A hand-off being queued in librdkafka; a report that comes meanwhile is kept as `Done`.
    Sending,
    /// A hand-off: its report goes to its consumer's reports.
    HandOff(PendingHandOff),
    /// One of a successful attempt's outputs (its topic, for a failure's words): its report
    /// counts down their join.
    Joined(Arc<Joined>, Arc<str>),
}

/// A successful attempt's outputs being written: reported once, when the last is through.
struct Joined {
    id: HandOffId,
    reports: HandOffReports,
    state: Mutex<JoinState>,
}

struct JoinState {
    remaining: usize,
    last: Option<Delivered>,
    failed: Option<BackendError>,
}

impl Joined {
    /// `done` outputs are through, one of them with `result`; the last reports the join.
    fn count_down(&self, done: usize, result: Option<Result<Delivered, BackendError>>) {
        let finished = {
            let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match result {
                Some(Ok(delivered)) => state.last = Some(delivered),
                Some(Err(error)) => {
                    state.failed.get_or_insert(error);
                }
                None => {}
            }
            state.remaining = state.remaining.saturating_sub(done);
            if state.remaining > 0 {
                return;
            }
            match state.failed.take() {
                Some(error) => Err(Undelivered::new(error, OutboundRecord::default())),
                None => Ok(state.last.unwrap_or(Delivered {
                    partition: 0,
                    offset: 0,
                })),
            }
        };
        self.reports.report(self.id, finished);
    }
}

/// A hand-off queued in librdkafka.
struct PendingHandOff {
    id: HandOffId,
    topic: Arc<str>,
    /// Given back if the write fails.
    record: OutboundRecord,
    reports: HandOffReports,
}

impl PendingHandOff {
    /// Reports the delivery's result, the record given back on failure.
    fn report(self, result: Result<Delivered, KafkaError>, refusals: &Refusals) {
        let Self {
            id,
            topic,
            record,
            reports,
        } = self;
        let result = result.map_err(|error| Undelivered::new(refusals.explain_write(&topic, error), record));
        reports.report(id, result);
    }
}

/// The producer's context: the table of writes, filled in by delivery reports, and the
/// refusals that explain a failed write.
pub(super) struct Reports {
    slots: Mutex<Slab<Slot>>,
    refusals: Refusals,
}

impl Reports {
    fn slots(&self) -> MutexGuard<'_, Slab<Slot>> {
        self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ClientContext for Reports {
    fn error(&self, error: KafkaError, reason: &str) {
        self.refusals.note(&error, reason);
    }
}

impl ProducerContext for Reports {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, slot: usize) {
        let result = match result {
            Ok(message) => Ok(Delivered {
                partition: message.partition() as u32,
                offset: message.offset() as u64,
            }),
            Err((error, _)) => Err(error.clone()),
        };
        let waker = {
            let mut slots = self.slots();
            let Some(entry) = slots.get_mut(slot) else {
                return;
            };
            if matches!(entry, Slot::Joined(..)) {
                let Slot::Joined(join, topic) = slots.remove(slot) else {
                    unreachable!("matched above")
                };
                drop(slots);
                let result = result.map_err(|error| self.refusals.explain_write(&topic, error));
                return join.count_down(1, Some(result));
            }
            if matches!(entry, Slot::HandOff(_)) {
                let Slot::HandOff(hand_off) = slots.remove(slot) else {
                    unreachable!("matched above")
                };
                drop(slots);
                return hand_off.report(result, &self.refusals);
            }
            match std::mem::replace(entry, Slot::Done(result)) {
                Slot::Waiting(waker) => waker,
                Slot::Abandoned => {
                    slots.remove(slot);
                    None
                }
                // A hand-off being sent: its sender finds the result and reports it.
                Slot::Sending => None,
                Slot::Done(_) | Slot::HandOff(_) | Slot::Joined(..) => unreachable!("one report per write"),
            }
        };
        // Outside the lock: the woken task may poll its write at once.
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::producer::Producer as _;

    use crate::backend::kafka::Kafka;
    use crate::backend::{HandOffId, HandOffReports, OutboundRecord, Output, Topic, TopicAdmin as _};

    #[tokio::test]
    async fn reports_complete_writes_by_slot_and_a_dropped_write_frees_its_own() {
        let kafka = Kafka::embedded().unwrap();
        let topic = Topic::main("writer.slots");
        kafka.create_topic(&topic, 1).await.unwrap();
        let record = OutboundRecord {
            partition: Some(0),
            payload: Some("x".into()),
            ..Default::default()
        };
        // Nobody waits for this one: its report only frees the slot.
        drop(kafka.produce(&topic, &record));
        let writes: Vec<_> = (0..100).map(|_| kafka.produce(&topic, &record)).collect();
        let offsets: Vec<u64> = futures_util::future::join_all(writes)
            .await
            .into_iter()
            .map(|delivered| delivered.unwrap().offset)
            .collect();
        // Queued in order to one partition, written in that order, after the dropped one.
        assert_eq!(offsets, (1..=100).collect::<Vec<u64>>());
        let slots = kafka.shared.main.writer.producer.context().slots();
        assert!(slots.is_empty(), "{} slots left", slots.len());
    }

    #[tokio::test]
    async fn hand_offs_are_reported_by_id_in_batches_and_free_their_slots() {
        let kafka = Kafka::embedded().unwrap();
        let topic = Topic::main("writer.hand_offs");
        kafka.create_topic(&topic, 1).await.unwrap();
        let record = |n: u64| OutboundRecord {
            partition: Some(0),
            payload: Some(n.to_string().into()),
            ..Default::default()
        };
        let reports = HandOffReports::new();
        for n in 0..100 {
            kafka.hand_off(HandOffId(n), &topic, record(n), &reports);
        }
        let (mut finished, mut batch, mut batches) = (Vec::new(), Vec::new(), 0);
        while finished.len() < 100 {
            reports.wait(&mut batch).await;
            batches += 1;
            finished.append(&mut batch);
        }
        // Queued in order to one partition: written in that order, each id once.
        let written: Vec<(u64, u64)> = finished
            .into_iter()
            .map(|done| (done.id.0, done.result.unwrap().offset))
            .collect();
        assert_eq!(written, (0..100).map(|n| (n, n)).collect::<Vec<_>>());
        assert!(batches < 100, "reports are taken many at once: {batches} batches");
        let slots = kafka.shared.main.writer.producer.context().slots();
        assert!(slots.is_empty(), "{} slots left", slots.len());
    }

    #[tokio::test]
    async fn an_attempts_outputs_are_reported_once_when_all_are_through() {
        let kafka = Kafka::embedded().unwrap();
        let topic = Topic::main("writer.outputs");
        kafka.create_topic(&topic, 1).await.unwrap();
        let output = |partition: u32, n: u64| Output {
            topic: topic.clone(),
            record: OutboundRecord {
                partition: Some(partition),
                payload: Some(n.to_string().into()),
                ..Default::default()
            },
        };
        let reports = HandOffReports::new();
        let writer = &kafka.shared.main.writer;
        assert!(writer.emit(HandOffId(1), (0..3).map(|n| output(0, n)).collect(), &reports));
        // One of three to a partition that does not exist: the join fails, once.
        writer.emit(
            HandOffId(2),
            vec![output(0, 3), output(7, 4), output(0, 5)],
            &reports,
        );
        let (mut finished, mut batch) = (Vec::new(), Vec::new());
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while finished.len() < 2 {
            tokio::time::timeout_at(deadline, reports.wait(&mut batch))
                .await
                .expect("both joins report");
            finished.append(&mut batch);
        }
        finished.sort_by_key(|done| done.id.0);
        assert_eq!(finished[0].id, HandOffId(1));
        assert!(finished[0].result.is_ok(), "{:?}", finished[0].result);
        assert_eq!(finished[1].id, HandOffId(2));
        assert!(finished[1].result.is_err(), "a missing partition fails the join");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!reports.take(&mut batch), "each join reports once");
        let slots = kafka.shared.main.writer.producer.context().slots();
        assert!(slots.is_empty(), "{} slots left", slots.len());
    }
}
