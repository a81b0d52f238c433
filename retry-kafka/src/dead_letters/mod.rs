//! Dead letters and parked entries as an operator sees them: read with their failure context,
//! filtered, and replayed with a checkpoint. The `retry-kafka` command-line tool is built on
//! this module; an application can call it too (an admin endpoint that replays, say).
//!
//! A replay sends each selected entry back to its main topic (or a retry level) with a fresh
//! attempt count and `rk-replays` one higher. An entry that fails again after a replay is
//! parked (`{topic}.{group}.parked`) by the runtime, not dead-lettered again, so nothing
//! cycles; and an entry replayed as often as the limit allows (counted by its failed replays
//! in the parking queue, `rk-replay-origin`) is not replayed unless forced.
//!
//! Replay is at least once end to end, like the rest of retry-kafka: the handler may see a
//! replayed message more than once if it fails or the app restarts. The replay itself sends
//! each entry once, even when it is killed and resumed: before each batch (sent all at once)
//! it writes to its checkpoint what it is about to send, where the target topic ended and how
//! far the queue is settled; on resume it reads the target from that end for the
//! `rk-replay-of` headers it wrote, so of the interrupted batch it sends only what is missing,
//! and it reads the queue from where it was settled.
//!
//! Queues are read a page at a time ([`Scan`]), so neither listing nor replaying a queue of a
//! million entries holds more than a page and a batch.
//!
//! ```
//! use retry_kafka::backend::{memory::InMemory, OutboundRecord, Publish, Topic, TopicRole};
//! use retry_kafka::dead_letters::{self, Filter, Replay};
//! use retry_kafka::handler::ErrorKind;
//! use retry_kafka::headers::{FailureContext, Headers};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = InMemory::new();
//! let mut headers = Headers::new();
//! FailureContext {
//!     original_topic: "orders".into(), original_partition: 0, original_offset: 7,
//!     original_timestamp_ms: None, group: "billing".into(), attempts: 4, due_at_ms: None,
//!     first_failure_at_ms: 1, last_failure_at_ms: 2, error_kind: ErrorKind::Transient,
//!     error_message: "bank down".into(), replays: None,
//! }
//! .write_to(&mut headers);
//! let dead = OutboundRecord { payload: Some("{}".into()), headers, ..Default::default() };
//! let dlq = Topic::new("orders.billing.dlq", TopicRole::DeadLetter);
//! broker.send(&dlq, dead).await?;
//!
//! let entries = dead_letters::read(&broker, &dlq).await?;
//! let transient = Filter::default().kind(ErrorKind::Transient);
//! assert_eq!(transient.clone().apply(entries).len(), 1);
//! let report = Replay::new(&broker, dlq, Topic::main("orders"))
//!     .run(&transient, |_| {})
//!     .await?;
//! assert_eq!(report.sent, 1);
//! let replayed = &broker.records("orders")[0];
//! assert_eq!(replayed.headers.get_str("rk-replays"), Some("1"));
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::backend::{Browse, Page, Record, Topic};
use crate::error::BackendError;
use crate::failure::ErrorKind;
use crate::headers::{self, FailureContext, HeaderError};

mod replay;

pub use replay::{
    replayed, Action, Progress, Replay, ReplayError, ReplayReport, DEFAULT_BATCH, DEFAULT_MAX_REPLAYS,
    HELD_BACK_NAMED,
};

/// An entry of a dead-letter or parking queue.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The message as stored: partition, offset, key, payload and headers.
    pub record: Record,
    /// Its `rk-*` headers, decoded; an error if a header is missing or malformed (an entry
    /// not written by retry-kafka, say).
    pub context: Result<FailureContext, HeaderError>,
}

impl DeadLetter {
    /// Decodes an entry's failure context.
    pub fn new(record: Record) -> Self {
        Self {
            context: FailureContext::from_headers(&record.headers),
            record,
        }
    }

    /// Times it was replayed already (`rk-replays`).
    pub fn replays(&self) -> u32 {
        headers::replays(&self.record.headers).unwrap_or(0)
    }

    /// Where it is in its queue, `{partition}:{offset}`, as `--entry` takes it.
    pub fn position(&self) -> String {
        format!("{}:{}", self.record.partition, self.record.offset)
    }
}

/// Every entry of `topic` (a dead-letter or parking queue), partition by partition, at once;
/// [`Scan`] reads a queue of any size a page at a time.
pub async fn read<B: Browse>(backend: &B, topic: &Topic) -> Result<Vec<DeadLetter>, BackendError> {
    Ok(backend
        .read(topic, &[])
        .await?
        .into_iter()
        .map(DeadLetter::new)
        .collect())
}

/// Records a [`Scan`] reads with one [`Browse::read_page`] by default.
pub const DEFAULT_PAGE: usize = 1000;

/// The entries of a queue, read a page at a time ([`Browse::read_page`]), partition by
/// partition in offset order, up to where the queue ended when the scan began: memory holds a
/// page, whatever the queue's size.
///
/// ```
/// use retry_kafka::backend::{memory::InMemory, OutboundRecord, Publish, Topic, TopicRole};
/// use retry_kafka::dead_letters::Scan;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), retry_kafka::error::BackendError> {
/// let broker = InMemory::new();
/// broker.create_topic("orders.billing.dlq", 2);
/// let dlq = Topic::new("orders.billing.dlq", TopicRole::DeadLetter);
/// for partition in [1, 0, 1] {
///     broker.send(&dlq, OutboundRecord { partition: Some(partition), ..Default::default() }).await?;
/// }
/// let mut scan = Scan::new(&broker, dlq).await?.page(2);
/// let mut positions = Vec::new();
/// while let Some(entry) = scan.next().await? {
///     positions.push(entry.position());
/// }
/// assert_eq!(positions, ["0:0", "1:0", "1:1"]);
/// assert_eq!(scan.read(), 3);
/// # Ok(()) }
/// ```
pub struct Scan<'b, B> {
    backend: &'b B,
    topic: Topic,
    /// Per partition, where the queue ended when the scan began.
    ends: Vec<u64>,
    /// Per partition, where to start (the first entry kept, where absent).
    starts: BTreeMap<u32, u64>,
    partition: u32,
    next: u64,
    page: std::vec::IntoIter<Record>,
    /// The partition has no page left after the one in hand.
    last_page: bool,
    page_size: usize,
    read: u64,
}

impl<'b, B: Browse> Scan<'b, B> {
    /// A scan of `topic` from its first entries to where it ends now.
    pub async fn new(backend: &'b B, topic: Topic) -> Result<Self, BackendError> {
        let ends = backend.end_offsets_of(&topic).await?;
        Ok(Self {
            backend,
            topic,
            ends,
            starts: BTreeMap::new(),
            partition: 0,
            next: 0,
            page: Vec::new().into_iter(),
            last_page: false,
            page_size: DEFAULT_PAGE,
            read: 0,
        })
    }

    /// Starts partition `p` at offset `from[p]` (where `from` has it) instead of its first entry.
    pub fn from(mut self, from: &BTreeMap<u32, u64>) -> Self {
        self.starts = from.clone();
        self.next = self.start_of(self.partition);
        self
    }

    /// Reads `records` a page (default [`DEFAULT_PAGE`]).
    pub fn page(mut self, records: usize) -> Self {
        self.page_size = records.max(1);
        self
    }

    fn start_of(&self, partition: u32) -> u64 {
        self.starts.get(&partition).copied().unwrap_or(0)
    }

    /// Entries read so far.
    pub fn read(&self) -> u64 {
        self.read
    }

    /// The next entry, or `None` at the end.
    pub async fn next(&mut self) -> Result<Option<DeadLetter>, BackendError> {
        loop {
            if let Some(record) = self.page.next() {
                self.read += 1;
                return Ok(Some(DeadLetter::new(record)));
            }
            if self.last_page {
                self.partition += 1;
                self.next = self.start_of(self.partition);
                self.last_page = false;
            }
            let Some(&end) = self.ends.get(self.partition as usize) else {
                return Ok(None);
            };
            let Some(page) = Page::new(self.partition, self.next..end, self.page_size) else {
                self.last_page = true;
                continue;
            };
            let page = self.backend.read_page(&self.topic, page).await?;
            // A short page is the partition's last: no round trip to find it empty.
            self.last_page = page.len() < self.page_size;
            if let Some(last) = page.last() {
                self.next = last.offset + 1;
            }
            self.page = page.into_iter();
        }
    }
}

/// Which entries to show or replay; every condition set must hold. The default keeps all.
///
/// ```
/// use retry_kafka::dead_letters::Filter;
/// use retry_kafka::handler::ErrorKind;
///
/// let filter = Filter::default()
///     .kind(ErrorKind::Timeout)
///     .failed_between(Some(1_700_000_000_000), None)
///     .key("42")
///     .text("bank");
/// ```
#[derive(Debug, Clone, Default)]
pub struct Filter {
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    kinds: Vec<ErrorKind>,
    key: Option<Bytes>,
    text: Option<String>,
    positions: Vec<(u32, u64)>,
}

impl Filter {
    /// Entries whose last failure is at or after `since_ms` and before `until_ms` (epoch ms).
    pub fn failed_between(mut self, since_ms: Option<i64>, until_ms: Option<i64>) -> Self {
        self.since_ms = since_ms;
        self.until_ms = until_ms;
        self
    }

    /// Entries that failed with `kind` (several calls: any of them).
    pub fn kind(mut self, kind: ErrorKind) -> Self {
        self.kinds.push(kind);
        self
    }

    /// Entries with exactly this key.
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Entries whose error message or payload (as text) contains `text`.
    pub fn text(mut self, text: impl Into<String>) -> Self {
        self.text = Some(text.into());
        self
    }

    /// The entry at `partition`/`offset` of its queue (several calls: any of them).
    pub fn position(mut self, partition: u32, offset: u64) -> Self {
        self.positions.push((partition, offset));
        self
    }

    /// Whether `entry` is selected.
    pub fn matches(&self, entry: &DeadLetter) -> bool {
        let record = &entry.record;
        let context = entry.context.as_ref().ok();
        let failed_at = context.map(|c| c.last_failure_at_ms).or(record.timestamp_ms);
        if self
            .since_ms
            .is_some_and(|since| failed_at.is_none_or(|at| at < since))
        {
            return false;
        }
        if self
            .until_ms
            .is_some_and(|until| failed_at.is_none_or(|at| at >= until))
        {
            return false;
        }
        if !self.kinds.is_empty() && !context.is_some_and(|c| self.kinds.contains(&c.error_kind)) {
            return false;
        }
        if self
            .key
            .as_ref()
            .is_some_and(|key| record.key.as_ref() != Some(key))
        {
            return false;
        }
        if !self.positions.is_empty() && !self.positions.contains(&(record.partition, record.offset)) {
            return false;
        }
        if let Some(text) = &self.text {
            let in_message = context.is_some_and(|c| c.error_message.contains(text.as_str()));
            let in_payload = record
                .payload
                .as_deref()
                .is_some_and(|payload| String::from_utf8_lossy(payload).contains(text.as_str()));
            if !in_message && !in_payload {
                return false;
            }
        }
        true
    }

    /// The entries that match, in their order.
    pub fn apply(&self, entries: Vec<DeadLetter>) -> Vec<DeadLetter> {
        entries.into_iter().filter(|entry| self.matches(entry)).collect()
    }
}
