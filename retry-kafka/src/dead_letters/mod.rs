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
//! each entry once, even when it is killed and resumed: before each batch it writes to its
//! checkpoint what it is about to send and where the target topic ended, and on resume it reads
//! the target from there for the `rk-replay-of` headers it wrote, so it sends only what is
//! missing.
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
//! let selected = Filter::default().kind(ErrorKind::Transient).apply(entries);
//! let report = Replay::new(&broker, "orders.billing.dlq", Topic::main("orders"))
//!     .run(&selected, |_| {})
//!     .await?;
//! assert_eq!(report.sent, 1);
//! let replayed = &broker.records("orders")[0];
//! assert_eq!(replayed.headers.get_str("rk-replays"), Some("1"));
//! # Ok(()) }
//! ```

use bytes::Bytes;

use crate::backend::{Browse, Record, Topic};
use crate::error::BackendError;
use crate::failure::ErrorKind;
use crate::headers::{self, FailureContext, HeaderError};

mod replay;

pub use replay::{replayed, Action, Progress, Replay, ReplayError, ReplayReport, DEFAULT_MAX_REPLAYS};

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

/// Every entry of `topic` (a dead-letter or parking queue), partition by partition.
pub async fn read<B: Browse>(backend: &B, topic: &Topic) -> Result<Vec<DeadLetter>, BackendError> {
    Ok(backend
        .read(topic, &[])
        .await?
        .into_iter()
        .map(DeadLetter::new)
        .collect())
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
