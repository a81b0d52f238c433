//! What crosses the seam: records read and written, topics and their roles, positions, pages
//! of a topic, subscriptions, what a consumer fetches and a write that failed.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use super::TopicRole;
use crate::error::BackendError;
use crate::headers::Headers;

/// A message read from a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The partition it was read from.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: u64,
    /// The broker's timestamp, epoch ms.
    pub timestamp_ms: Option<i64>,
    /// The key, if any.
    pub key: Option<Bytes>,
    /// The payload; `None` for a Kafka tombstone.
    pub payload: Option<Bytes>,
    /// The headers, in order.
    pub headers: Headers,
}

impl Record {
    /// Where it was read: its partition and offset.
    ///
    /// ```
    /// use retry_kafka::backend::{Position, Record};
    /// use retry_kafka::headers::Headers;
    ///
    /// let record = Record { partition: 2, offset: 7, timestamp_ms: None, key: None, payload: None, headers: Headers::new() };
    /// assert_eq!(record.position(), Position { partition: 2, offset: 7 });
    /// ```
    pub fn position(&self) -> Position {
        Position {
            partition: self.partition,
            offset: self.offset,
        }
    }
}

/// A topic as the seam names it: its name and what it is for. Every call of [`TopicAdmin`](super::TopicAdmin),
/// [`Publish`](super::Publish), [`Browse`](super::Browse), [`Backend`](super::Backend), [`RetryStore`](super::RetryStore) and [`Consumer::hand_off`](super::Consumer::hand_off) takes one, so
/// a backend routes by the role and never learns it any other way.
///
/// The name is shared (`Arc<str>`): cloning a `Topic` costs a reference count, so a hand-off's
/// future can own its target without copying the name, and the runtime can keep one per level.
///
/// ```
/// use retry_kafka::backend::{Topic, TopicRole};
///
/// let level = Topic::new("orders.billing.retry.1", TopicRole::Retry { level: 1 });
/// assert_eq!(&*level.name, "orders.billing.retry.1");
/// assert!(level.role.is_derived());
/// assert_eq!(Topic::main("orders"), Topic::new("orders", TopicRole::Main));
/// assert_eq!(level.to_string(), "orders.billing.retry.1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Topic {
    /// The topic's name (the stream's, on Redis).
    pub name: Arc<str>,
    /// What it is for.
    pub role: TopicRole,
}

impl Topic {
    /// The topic `name` of role `role`.
    pub fn new(name: impl Into<Arc<str>>, role: TopicRole) -> Self {
        Topic {
            name: name.into(),
            role,
        }
    }

    /// The main topic `name`: what producers write and a handler's group reads first.
    pub fn main(name: impl Into<Arc<str>>) -> Self {
        Topic::new(name, TopicRole::Main)
    }
}

/// The name, as logs and errors show it.
impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// What one [`Browse::read_page`](super::Browse::read_page) asks for: up to [`limit`](Self::limit) records of one
/// partition, in a range of offsets. Never empty: [`Page::new`] gives none for an empty range
/// or a zero limit, so a backend reads every page it is given and checks nothing.
///
/// ```
/// use retry_kafka::backend::Page;
///
/// let page = Page::new(2, 10..20, 5).expect("a range and a limit");
/// assert_eq!((page.partition(), page.from(), page.last(), page.limit()), (2, 10, 19, 5));
/// assert!(Page::new(2, 20..20, 5).is_none(), "nothing before offset 20 at or after it");
/// assert!(Page::new(2, 10..20, 0).is_none(), "no room");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    partition: u32,
    offsets: Range<u64>,
    limit: usize,
}

impl Page {
    /// Up to `limit` records of `partition` at offsets in `offsets`; `None` when it could hold
    /// none.
    pub fn new(partition: u32, offsets: Range<u64>, limit: usize) -> Option<Self> {
        (!offsets.is_empty() && limit > 0).then_some(Page {
            partition,
            offsets,
            limit,
        })
    }

    /// The partition read.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// The first offset the page may hold.
    pub fn from(&self) -> u64 {
        self.offsets.start
    }

    /// The last offset the page may hold.
    pub fn last(&self) -> u64 {
        self.offsets.end - 1
    }

    /// The offset the page ends before.
    pub fn until(&self) -> u64 {
        self.offsets.end
    }

    /// The most records the page holds (at least 1).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether `offset` is in the page's range.
    pub fn holds(&self, offset: u64) -> bool {
        self.offsets.contains(&offset)
    }
}

/// A place in a topic: a partition and an offset in it. Where a record was read
/// ([`Record::position`]), where a hand-off's source is ([`Consumer::hand_off`](super::Consumer::hand_off)), and where a
/// produced record landed ([`Delivered`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    /// The partition.
    pub partition: u32,
    /// The offset in the partition.
    pub offset: u64,
}

/// A message to produce.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundRecord {
    /// The partition; `None` lets the backend pick by key.
    pub partition: Option<u32>,
    /// The key.
    pub key: Option<Bytes>,
    /// The payload.
    pub payload: Option<Bytes>,
    /// The headers.
    pub headers: Headers,
}

/// A record a handler emitted ([`Context::emit`](crate::Context::emit)), bound for a main
/// topic and written only when its attempt succeeds: into the consumer's transaction when it
/// writes in one ([`Consumer::emit`](super::Consumer::emit)), else published by the runtime.
///
/// ```
/// use retry_kafka::backend::{OutboundRecord, Output, Topic};
///
/// let output = Output { topic: Topic::main("invoices"), record: OutboundRecord::default() };
/// assert!(!output.topic.role.is_derived());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Where it goes: a main topic.
    pub topic: Topic,
    /// What is written.
    pub record: OutboundRecord,
}

impl OutboundRecord {
    /// When a retry is due (epoch ms), from its `rk-due-at` header: the runtime writes it, a
    /// backend with a delay store (Redis) keeps the record out of sight until then, the others
    /// deliver it at once and the consumer holds the partition until it is due.
    ///
    /// ```
    /// use retry_kafka::backend::OutboundRecord;
    ///
    /// let mut record = OutboundRecord::default();
    /// assert_eq!(record.due_at_ms(), None);
    /// record.headers.insert("rk-due-at", "1700000010000");
    /// assert_eq!(record.due_at_ms(), Some(1_700_000_010_000));
    /// ```
    pub fn due_at_ms(&self) -> Option<i64> {
        crate::headers::due_at_ms(&self.headers)
    }
}

/// Where a produced message landed, once the broker acknowledged it: its [`Position`].
pub type Delivered = Position;

/// What a consumer asks the backend for.
///
/// ```
/// use retry_kafka::backend::{Subscription, Topic};
///
/// let subscription = Subscription { topic: Topic::main("orders"), group: "billing".into() };
/// assert_eq!(&*subscription.topic.name, "orders");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The topic to consume, with its role.
    pub topic: Topic,
    /// The consumer group.
    pub group: String,
}

/// What a consumer receives.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fetched {
    /// A message.
    Record(Record),
    /// These partitions now belong to this consumer.
    Assigned(Vec<u32>),
    /// These partitions were taken away; acknowledgements for them are ignored from now on.
    Revoked(Vec<u32>),
}

/// A hand-off that did not go through: why, and its record, given back so the runtime can try
/// again without keeping a copy of every record it hands on.
///
/// ```
/// use retry_kafka::backend::{OutboundRecord, Undelivered};
/// use retry_kafka::error::BackendError;
///
/// let record = OutboundRecord { payload: Some("{}".into()), ..Default::default() };
/// let failed = Undelivered::new(BackendError::Produce { topic: "t".into(), source: "no".into() }, record);
/// assert_eq!(failed.record.payload.as_deref(), Some(&b"{}"[..]));
/// assert!(failed.to_string().contains("no"));
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
#[non_exhaustive]
pub struct Undelivered {
    /// Why the write failed.
    #[source]
    pub error: BackendError,
    /// The record, as it was given.
    pub record: OutboundRecord,
    /// Not written because its source's partition is no longer this consumer's (revoked, or
    /// taken back by an aborted transaction): its next reader runs the source again, so the
    /// runtime does not try it again and says so quietly.
    pub given_up: bool,
}

impl Undelivered {
    /// A failed write of `record`.
    pub fn new(error: BackendError, record: OutboundRecord) -> Self {
        Self {
            error,
            record,
            given_up: false,
        }
    }

    /// A write of `record` not made because its source's partition was given up (see
    /// [`given_up`](Undelivered::given_up)).
    ///
    /// ```
    /// use retry_kafka::backend::{OutboundRecord, Undelivered};
    /// use retry_kafka::error::BackendError;
    ///
    /// let error = BackendError::Produce { topic: "t".into(), source: "revoked".into() };
    /// assert!(Undelivered::given_up(error, OutboundRecord::default()).given_up);
    /// ```
    pub fn given_up(error: BackendError, record: OutboundRecord) -> Self {
        Self {
            given_up: true,
            ..Self::new(error, record)
        }
    }
}
