//! The floor of the failure path on Kafka: the same work written by hand with rdkafka.
//!
//! One `BaseConsumer` reads the main topic from the start (a fresh group, the settings of the
//! raw loop in `benches/throughput.rs`), decodes each JSON event and decides by `charge`'s
//! rule for a first attempt whether it fails. A failed record is forwarded to one retry topic
//! (its source partition, the same key and payload bytes, the twelve `rk-*` headers retry-kafka
//! writes on a hand-off to level 1, values of the same size) through a `ThreadedProducer` with
//! retry-kafka's producer settings (`acks=all`, idempotence, `linger.ms=2`, `BENCH_PRODUCER`),
//! with no per-record wait. Two ways to store offsets:
//!
//! - [`Stores::AsItGoes`]: each offset as soon as its record is decoded (and forwarded): a
//!   crash may lose forwards that were not yet delivered.
//! - [`Stores::FromReports`]: at least once, as retry-kafka does: an offset is stored only when
//!   every record up to it on its partition is concluded (succeeded, or its forward
//!   acknowledged), a contiguous prefix per partition fed by the producer's delivery callback
//!   through a channel the loop drains (no per-record future).
//!
//! Either drain ends when every record has been read and the last forward acknowledged.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use retry_kafka::headers::names;
use retry_kafka::prelude::*;
use retry_kafka_suite::{peak_rss_mib, process_cpu_time, raw_consumer_config, reset_peak_rss};

use super::{epoch_ms, producer_properties, Mode, OrderPlaced, Run, EVENTS, PARTITIONS, TOPIC};

/// When the floor stores a record's offset.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Stores {
    /// As soon as the record is decoded, before its forward is delivered.
    AsItGoes,
    /// From the delivery reports: a contiguous prefix of concluded records per partition.
    FromReports,
}

impl Stores {
    pub const BOTH: [Stores; 2] = [Stores::AsItGoes, Stores::FromReports];

    pub fn label(self) -> &'static str {
        match self {
            Stores::AsItGoes => "floor, stores as it goes",
            Stores::FromReports => "floor, stores from reports",
        }
    }

    pub fn slug(self) -> &'static str {
        match self {
            Stores::AsItGoes => "as-it-goes",
            Stores::FromReports => "from-reports",
        }
    }
}

/// Whether `charge` fails the first attempt of `order_id` in `mode`.
fn fails(mode: Mode, order_id: u64) -> bool {
    match mode {
        Mode::NoFailures => false,
        Mode::Failures => order_id % 100 == 1 || order_id.is_multiple_of(10),
        Mode::Outage => order_id < *EVENTS / 2,
        Mode::Peer => order_id.is_multiple_of(10),
    }
}

/// Counts acknowledged forwards; with `reports`, sends each one's source position (partition
/// in the top 16 bits, offset below) to the loop.
struct Deliveries {
    acked: AtomicU64,
    failed: AtomicU64,
    reports: Option<mpsc::Sender<usize>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, source: usize) {
        if result.is_err() {
            self.failed.fetch_add(1, Ordering::Release);
            return;
        }
        // Sent before counted: when the loop sees every forward counted, every report is queued.
        if let Some(reports) = &self.reports {
            reports.send(source).unwrap();
        }
        self.acked.fetch_add(1, Ordering::Release);
    }
}

/// One partition's concluded prefix, for [`Stores::FromReports`].
#[derive(Default)]
struct Prefix {
    /// Forwarded offsets not yet all acknowledged, in order, each with whether its report came.
    in_flight: VecDeque<(i64, bool)>,
    /// The last offset read.
    last_read: i64,
}

impl Prefix {
    /// A record that succeeded: whether to store its offset now (nothing before it in flight).
    fn succeeded(&mut self, offset: i64) -> bool {
        self.last_read = offset;
        self.in_flight.is_empty()
    }

    fn forwarded(&mut self, offset: i64) {
        self.last_read = offset;
        self.in_flight.push_back((offset, false));
    }

    /// The forward of `offset` is acknowledged: the offset to store, if the prefix grew.
    fn acknowledged(&mut self, offset: i64) -> Option<i64> {
        // With idempotence a partition's reports come in order: this is the front.
        let at = self
            .in_flight
            .binary_search_by_key(&offset, |&(o, _)| o)
            .expect("a report of a forward in flight");
        self.in_flight[at].1 = true;
        let mut grew = false;
        while self.in_flight.front().is_some_and(|&(_, done)| done) {
            self.in_flight.pop_front();
            grew = true;
        }
        grew.then(|| {
            self.in_flight
                .front()
                .map_or(self.last_read, |&(next, _)| next - 1)
        })
    }
}

/// The decimal digits of `n`, in `buf`.
fn digits(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// The headers retry-kafka writes on a hand-off to level 1, by name, values of the same size.
fn hand_off_headers(partition: i32, offset: i64, timestamp_ms: Option<i64>) -> OwnedHeaders {
    let now = epoch_ms() as u64;
    let mut buf = [0; 20];
    let mut headers = OwnedHeaders::new_with_capacity(12)
        .insert(Header {
            key: names::SCHEMA,
            value: Some("1"),
        })
        .insert(Header {
            key: names::ORIGINAL_TOPIC,
            value: Some(TOPIC),
        })
        .insert(Header {
            key: names::ORIGINAL_PARTITION,
            value: Some(digits(partition as u64, &mut buf)),
        })
        .insert(Header {
            key: names::ORIGINAL_OFFSET,
            value: Some(digits(offset as u64, &mut buf)),
        });
    if let Some(timestamp) = timestamp_ms {
        headers = headers.insert(Header {
            key: names::ORIGINAL_TIMESTAMP,
            value: Some(digits(timestamp as u64, &mut buf)),
        });
    }
    headers
        .insert(Header {
            key: names::GROUP,
            value: Some("bench-fail"),
        })
        .insert(Header {
            key: names::ATTEMPTS,
            value: Some("1"),
        })
        .insert(Header {
            key: names::DUE_AT,
            value: Some(digits(now + 1000, &mut buf)),
        })
        .insert(Header {
            key: names::FIRST_FAILURE_AT,
            value: Some(digits(now, &mut buf)),
        })
        .insert(Header {
            key: names::LAST_FAILURE_AT,
            value: Some(digits(now, &mut buf)),
        })
        .insert(Header {
            key: names::ERROR_KIND,
            value: Some("transient"),
        })
        .insert(Header {
            key: names::ERROR_MESSAGE,
            value: Some("payment gateway unavailable"),
        })
}

/// One run of the floor over the main topic as group `group`, forwarding to `retry_topic`
/// (created with the main topic's partitions). `settle` is not measured (zero).
pub fn run(bootstrap: &str, group: &str, retry_topic: &str, mode: Mode, stores: Stores) -> Run {
    let start_rss_mib = reset_peak_rss();
    let mut consumer_config = raw_consumer_config(bootstrap, group);
    if let Ok(wait) = std::env::var("BENCH_FETCH_WAIT_MS") {
        consumer_config.set("fetch.wait.max.ms", wait);
    }
    let consumer: BaseConsumer = consumer_config.create().unwrap();
    consumer.subscribe(&[TOPIC]).unwrap();

    let mut producer_config = ClientConfig::new();
    producer_config
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "30000");
    for (key, value) in producer_properties() {
        producer_config.set(key, value);
    }
    let (reports, reported) = mpsc::channel();
    let producer: ThreadedProducer<Deliveries> = producer_config
        .create_with_context(Deliveries {
            acked: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            reports: (stores == Stores::FromReports).then_some(reports),
        })
        .unwrap();
    let deliveries = producer.context();

    let failing = (0..*EVENTS).filter(|&id| fails(mode, id)).count() as u64;
    let mut prefixes: Vec<Prefix> = (0..PARTITIONS).map(|_| Prefix::default()).collect();
    // Stores what a report concludes, by the topic's name (the message is gone by then).
    let conclude = |prefixes: &mut [Prefix], source: usize| {
        let (partition, offset) = ((source >> 48) as i32, (source & ((1 << 48) - 1)) as i64);
        if let Some(upto) = prefixes[partition as usize].acknowledged(offset) {
            consumer.store_offset(TOPIC, partition, upto).unwrap();
        }
    };
    let (mut first, mut hand_offs) = (None, None);
    let (mut read, mut forwarded) = (0, 0);
    let mut check_hand_offs = |first: Option<(Instant, Duration)>| {
        if hand_offs.is_none() && deliveries.acked.load(Ordering::Acquire) >= failing {
            hand_offs = first.map(|(at, _): (Instant, Duration)| at.elapsed());
        }
    };
    while read < *EVENTS {
        for source in reported.try_iter() {
            conclude(&mut prefixes, source);
        }
        check_hand_offs(first);
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.unwrap();
        first.get_or_insert_with(|| (Instant::now(), process_cpu_time()));
        read += 1;
        let order = OrderPlaced::decode(message.payload().unwrap()).unwrap();
        let (partition, offset) = (message.partition(), message.offset());
        if !fails(mode, order.order_id) {
            let now = match stores {
                Stores::AsItGoes => true,
                Stores::FromReports => prefixes[partition as usize].succeeded(offset),
            };
            if now {
                // By the message's own topic handle, as the raw loop of benches/throughput.rs.
                consumer.store_offset_from_message(&message).unwrap();
            }
            continue;
        }
        let headers = hand_off_headers(partition, offset, message.timestamp().to_millis());
        let source = ((partition as usize) << 48) | offset as usize;
        let mut record = BaseRecord::with_opaque_to(retry_topic, source)
            .partition(partition)
            .key(message.key().unwrap())
            .payload(message.payload().unwrap())
            .headers(headers);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((error, again)) if error.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    // The producer's own thread polls; let it catch up.
                    record = again;
                    std::thread::sleep(Duration::from_micros(100));
                }
                Err((error, _)) => panic!("forward: {error}"),
            }
        }
        forwarded += 1;
        match stores {
            Stores::AsItGoes => consumer.store_offset_from_message(&message).unwrap(),
            Stores::FromReports => prefixes[partition as usize].forwarded(offset),
        }
    }
    // Every record read: wait for the last forward's acknowledgement (and conclude it).
    while deliveries.acked.load(Ordering::Acquire) < forwarded {
        assert_eq!(deliveries.failed.load(Ordering::Acquire), 0, "a forward failed");
        match reported.recv_timeout(Duration::from_micros(100)) {
            Ok(source) => conclude(&mut prefixes, source),
            Err(mpsc::RecvTimeoutError::Timeout) => check_hand_offs(first),
            // No reports (stores as it goes): wait as long.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(Duration::from_micros(100));
                check_hand_offs(first);
            }
        }
    }
    for source in reported.try_iter() {
        conclude(&mut prefixes, source);
    }
    check_hand_offs(first);
    let (first, cpu_first) = first.unwrap();
    let run = Run {
        drain: first.elapsed(),
        drain_cpu: process_cpu_time() - cpu_first,
        settle: Duration::ZERO,
        hand_offs: hand_offs.unwrap_or_default(),
        peak_rss_mib: peak_rss_mib(),
        start_rss_mib,
    };
    if stores == Stores::FromReports {
        assert!(prefixes.iter().all(|p| p.in_flight.is_empty()));
    }
    let _ = consumer.commit_consumer_state(CommitMode::Sync);
    run
}
