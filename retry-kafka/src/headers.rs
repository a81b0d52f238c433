//! Message headers and the failure context retry-kafka writes into them.
//!
//! This module owns every `rk-*` header name. The set is a public, versioned wire format
//! (`rk-schema: 1`): values are UTF-8 text so `kcat -J`, Kafka UIs and `redis-cli` show them.

use std::borrow::Cow;
use std::fmt;

use bytes::{BufMut as _, Bytes, BytesMut};

use crate::failure::ErrorKind;

/// Header names of the failure context, schema 1.
pub mod names {
    /// The wire-format version: `1`.
    pub const SCHEMA: &str = "rk-schema";
    /// Main topic the message was first consumed from.
    pub const ORIGINAL_TOPIC: &str = "rk-original-topic";
    /// Partition on the main topic.
    pub const ORIGINAL_PARTITION: &str = "rk-original-partition";
    /// Offset on the main topic.
    pub const ORIGINAL_OFFSET: &str = "rk-original-offset";
    /// Timestamp of the main-topic message, epoch ms.
    pub const ORIGINAL_TIMESTAMP: &str = "rk-original-timestamp";
    /// Consumer group that failed the message.
    pub const GROUP: &str = "rk-group";
    /// Attempts that have failed so far (1 after the first failure).
    pub const ATTEMPTS: &str = "rk-attempts";
    /// Epoch ms before which the next attempt must not start; absent on dead letters.
    pub const DUE_AT: &str = "rk-due-at";
    /// When the first attempt failed, epoch ms.
    pub const FIRST_FAILURE_AT: &str = "rk-first-failure-at";
    /// When the latest attempt failed, epoch ms.
    pub const LAST_FAILURE_AT: &str = "rk-last-failure-at";
    /// `transient`, `permanent`, `decode`, `panic` or `timeout`.
    pub const ERROR_KIND: &str = "rk-error-kind";
    /// The error's display text, at most [`MAX_ERROR_MESSAGE`](super::MAX_ERROR_MESSAGE) bytes.
    pub const ERROR_MESSAGE: &str = "rk-error-message";
    /// Times the entry was replayed from the dead-letter queue.
    pub const REPLAYS: &str = "rk-replays";
    /// The dead letter a replayed record was sent from, `{topic}/{partition}/{offset}`: written
    /// by a replay on each record it sends, so a replay resumed after a crash can tell what it
    /// sent already. Lives on the replayed record only (the next hop rewrites `rk-*`).
    pub const REPLAY_OF: &str = "rk-replay-of";
    /// The queue entry a line of replays started from, `{topic}/{partition}/{offset}`: written
    /// by a replay (the entry's own position, or the origin it already carries when it is a
    /// parked copy of an earlier replay) and carried by every later hop, so the parking queue's
    /// copies tell the loop guard how often that entry was replayed and failed again.
    pub const REPLAY_ORIGIN: &str = "rk-replay-origin";
    /// On a key-ordered handler's record held back behind an earlier record of its key, epoch
    /// ms when it was held back; carried by its later hops, so its dead letter says it waited.
    pub const HELD_AT: &str = "rk-held-at";
    /// Beside [`HELD_AT`]: the main-topic offset of the record of its key it waited behind
    /// (the first of the key's records on a retry level when it was held back).
    pub const HELD_BEHIND: &str = "rk-held-behind";
    /// On a key-ordered handler's held topic, a record that failed for the last time and holds
    /// its key's later records until an operator resolves it (`on_dead_letter = "hold_key"`):
    /// the queue it goes to when discarded, `dlq` or `parked`. Its failure story is in the
    /// other headers, as a dead letter's.
    pub const DEAD_HELD: &str = "rk-dead-held";
    /// On a key-ordered handler's held topic, a resolution written by the tool (`retry-kafka
    /// held replay|discard`): the offset, on the held topic, of the dead-held record it
    /// resolves. The record has no payload.
    pub const RESOLVES: &str = "rk-resolves";
    /// Beside [`RESOLVES`]: `replay` (the record is attempted again, before its key's later
    /// records) or `discard` (it goes to its queue and its key is released).
    pub const RESOLUTION: &str = "rk-resolution";
    /// W3C trace context. Without the `opentelemetry` feature (or without an OpenTelemetry
    /// layer) it is carried unchanged; with them every retry and dead-letter hop gets one that
    /// continues the trace, the failed attempt's span as its parent.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C trace state, vendor entries beside [`TRACEPARENT`]; carried and replaced with it.
    pub const TRACESTATE: &str = "tracestate";
    /// Prefix of every header retry-kafka owns.
    pub const PREFIX: &str = "rk-";

    /// The names above, so a header read from a broker under one of them takes the constant
    /// instead of a copy of its name.
    #[cfg(any(feature = "kafka", feature = "redis", feature = "postgres"))]
    pub(crate) const KNOWN: [&str; 22] = [
        SCHEMA,
        ORIGINAL_TOPIC,
        ORIGINAL_PARTITION,
        ORIGINAL_OFFSET,
        ORIGINAL_TIMESTAMP,
        GROUP,
        ATTEMPTS,
        DUE_AT,
        FIRST_FAILURE_AT,
        LAST_FAILURE_AT,
        ERROR_KIND,
        ERROR_MESSAGE,
        REPLAYS,
        REPLAY_OF,
        REPLAY_ORIGIN,
        HELD_AT,
        HELD_BEHIND,
        DEAD_HELD,
        RESOLVES,
        RESOLUTION,
        TRACEPARENT,
        TRACESTATE,
    ];
}

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = 1;

/// `rk-error-message` is cut to at most this many bytes, on a character boundary.
pub const MAX_ERROR_MESSAGE: usize = 1024;

/// A message's headers, in order; a name may repeat, as Kafka allows.
///
/// ```
/// use retry_kafka::headers::Headers;
/// let mut headers = Headers::new();
/// headers.insert("tenant", "acme");
/// headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
/// assert_eq!(headers.get_str("tenant"), Some("acme"));
/// assert_eq!(headers.len(), 2);
/// ```
#[derive(Default, PartialEq, Eq)]
pub struct Headers {
    // The names retry-kafka writes are constants: a hand-off's dozen headers cost no name
    // allocation, written or read back (profiled: names and values were most of a hand-off's
    // allocations).
    entries: Vec<(Cow<'static, str>, Bytes)>,
}

impl Clone for Headers {
    fn clone(&self) -> Self {
        // Most records carry no headers, and each is cloned into its `Context`: an empty one
        // without a call into `Vec::clone` (it showed in the success path's instruction count).
        if self.entries.is_empty() {
            return Headers::default();
        }
        Headers {
            entries: self.entries.clone(),
        }
    }
}

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// No headers, with room for `capacity` of them.
    ///
    /// ```
    /// use retry_kafka::headers::Headers;
    /// let headers = Headers::with_capacity(4);
    /// assert!(headers.is_empty());
    /// ```
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            entries: Vec::with_capacity(capacity),
        }
    }

    /// Appends a header (an existing one of the same name stays).
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<Bytes>) {
        self.entries.push((Cow::Owned(name.into()), value.into()));
    }

    /// Appends a header read from a broker: a name retry-kafka owns is not copied.
    #[cfg(any(feature = "kafka", feature = "redis", feature = "postgres"))]
    pub(crate) fn insert_read(&mut self, name: &str, value: Bytes) {
        let name = match names::KNOWN.iter().find(|known| **known == name) {
            Some(known) => Cow::Borrowed(*known),
            None => Cow::Owned(name.to_owned()),
        };
        self.entries.push((name, value));
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, v)| &v[..])
    }

    /// The first value of `name`, if it is UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Sets `name` to `value`: the first header of that name takes it in place (its name is
    /// not allocated again), later ones are removed; appended when there is none.
    pub(crate) fn replace(&mut self, name: &str, value: impl Into<Bytes>) {
        let mut value = Some(value.into());
        self.entries.retain_mut(|(n, v)| {
            if n != name {
                return true;
            }
            match value.take() {
                Some(new) => {
                    *v = new;
                    true
                }
                None => false,
            }
        });
        if let Some(value) = value {
            self.entries.push((Cow::Owned(name.to_owned()), value));
        }
    }

    /// Removes every header for which `keep` returns false.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.entries.retain(|(n, _)| keep(n));
    }

    /// The headers in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &[u8])> {
        self.entries.iter().map(|(n, v)| (&**n, &v[..]))
    }

    /// The number of headers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(n, v)| (n, String::from_utf8_lossy(v))))
            .finish()
    }
}

impl<N: Into<String>, V: Into<Bytes>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        Self {
            entries: iter
                .into_iter()
                .map(|(n, v)| (Cow::Owned(n.into()), v.into()))
                .collect(),
        }
    }
}

impl IntoIterator for Headers {
    type Item = (String, Bytes);
    type IntoIter = std::iter::Map<
        std::vec::IntoIter<(Cow<'static, str>, Bytes)>,
        fn((Cow<'static, str>, Bytes)) -> (String, Bytes),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter().map(|(n, v)| (n.into_owned(), v))
    }
}

/// What a key-ordered handler's record carries onto its held topic when it is held back
/// behind an earlier record of its key: where it came from (as a failure's context says it),
/// no attempt made, and what it waits behind. Its own headers stay; `rk-*` ones are rewritten,
/// as every hop does.
pub(crate) struct HeldBack<'a> {
    pub(crate) original_topic: &'a str,
    pub(crate) original_partition: u32,
    pub(crate) original_offset: u64,
    pub(crate) original_timestamp_ms: Option<i64>,
    pub(crate) group: &'a str,
    pub(crate) held_at_ms: i64,
    /// The main-topic offset of the key's record on a retry level.
    pub(crate) behind_offset: u64,
    pub(crate) replays: Option<u32>,
}

impl HeldBack<'_> {
    pub(crate) fn write_to(&self, headers: &mut Headers) {
        headers.retain(|name| !name.starts_with(names::PREFIX) || name == names::REPLAY_ORIGIN);
        let mut values = Values(BytesMut::with_capacity(
            96 + self.original_topic.len() + self.group.len(),
        ));
        let mut put = |name: &'static str, value: Bytes| headers.entries.push((Cow::Borrowed(name), value));
        put(names::SCHEMA, values.number(SCHEMA_VERSION));
        put(names::ORIGINAL_TOPIC, values.text(self.original_topic));
        put(names::ORIGINAL_PARTITION, values.number(self.original_partition));
        put(names::ORIGINAL_OFFSET, values.number(self.original_offset));
        if let Some(timestamp) = self.original_timestamp_ms {
            put(names::ORIGINAL_TIMESTAMP, values.number(timestamp));
        }
        put(names::GROUP, values.text(self.group));
        put(names::ATTEMPTS, values.number(0u32));
        put(names::HELD_AT, values.number(self.held_at_ms));
        put(names::HELD_BEHIND, values.number(self.behind_offset));
        if let Some(replays) = self.replays {
            put(names::REPLAYS, values.number(replays));
        }
    }
}

/// The failure story of a retried or dead-lettered message, as carried in its `rk-*` headers.
///
/// ```
/// use retry_kafka::handler::ErrorKind;
/// use retry_kafka::headers::{FailureContext, Headers};
///
/// let context = FailureContext {
///     original_topic: "orders".into(),
///     original_partition: 2,
///     original_offset: 41,
///     original_timestamp_ms: Some(1_700_000_000_000),
///     group: "billing".into(),
///     attempts: 1,
///     due_at_ms: Some(1_700_000_010_000),
///     first_failure_at_ms: 1_700_000_000_100,
///     last_failure_at_ms: 1_700_000_000_100,
///     error_kind: ErrorKind::Transient,
///     error_message: "bank unavailable".into(),
///     replays: None,
/// };
/// let mut headers = Headers::new();
/// context.write_to(&mut headers);
/// assert_eq!(headers.get_str("rk-attempts"), Some("1"));
/// assert_eq!(FailureContext::from_headers(&headers).unwrap(), context);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureContext {
    /// `rk-original-topic`.
    pub original_topic: String,
    /// `rk-original-partition`.
    pub original_partition: u32,
    /// `rk-original-offset`.
    pub original_offset: u64,
    /// `rk-original-timestamp`, epoch ms.
    pub original_timestamp_ms: Option<i64>,
    /// `rk-group`.
    pub group: String,
    /// `rk-attempts`: attempts failed so far.
    pub attempts: u32,
    /// `rk-due-at`, epoch ms; `None` on dead letters.
    pub due_at_ms: Option<i64>,
    /// `rk-first-failure-at`, epoch ms.
    pub first_failure_at_ms: i64,
    /// `rk-last-failure-at`, epoch ms.
    pub last_failure_at_ms: i64,
    /// `rk-error-kind`.
    pub error_kind: ErrorKind,
    /// `rk-error-message`, at most [`MAX_ERROR_MESSAGE`] bytes.
    pub error_message: String,
    /// `rk-replays`; `None` until the first replay.
    pub replays: Option<u32>,
}

/// Header values written one after another into one buffer, each split off as its own view.
struct Values(BytesMut);

impl Values {
    fn number(&mut self, value: impl itoa::Integer) -> Bytes {
        // `itoa`, not `write!`: a number through `fmt` cost ~350 instructions, seven numbers a
        // third of building a hand-off's headers (callgrind, the outage workload).
        self.0.put_slice(itoa::Buffer::new().format(value).as_bytes());
        self.0.split().freeze()
    }

    fn text(&mut self, value: &str) -> Bytes {
        self.0.put_slice(value.as_bytes());
        self.0.split().freeze()
    }
}

/// A header of the failure context is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// A required header is absent.
    #[error("header `{0}` is missing")]
    Missing(&'static str),
    /// A header's value does not parse.
    #[error("header `{name}` has the invalid value {value:?}")]
    Invalid {
        /// The header's name.
        name: &'static str,
        /// Its value, lossily decoded.
        value: String,
    },
}

impl FailureContext {
    /// Replaces every `rk-*` header in `headers` with this context; other headers stay as they
    /// are, in order, and so does `rk-replay-origin` (not a failure's, a replay's: the loop
    /// guard counts by it).
    pub fn write_to(&self, headers: &mut Headers) {
        headers.retain(|name| {
            !name.starts_with(names::PREFIX)
                || name == names::REPLAY_ORIGIN
                || name == names::HELD_AT
                || name == names::HELD_BEHIND
        });
        headers.entries.reserve(13);
        // Every value goes into one buffer, each header a view of it: one allocation for the
        // values instead of one per header.
        let message = truncate_utf8(&self.error_message, MAX_ERROR_MESSAGE);
        let mut values = Values(BytesMut::with_capacity(
            160 + self.original_topic.len() + self.group.len() + message.len(),
        ));
        let mut put = |name: &'static str, value: Bytes| headers.entries.push((Cow::Borrowed(name), value));
        put(names::SCHEMA, values.number(SCHEMA_VERSION));
        put(names::ORIGINAL_TOPIC, values.text(&self.original_topic));
        put(names::ORIGINAL_PARTITION, values.number(self.original_partition));
        put(names::ORIGINAL_OFFSET, values.number(self.original_offset));
        if let Some(timestamp) = self.original_timestamp_ms {
            put(names::ORIGINAL_TIMESTAMP, values.number(timestamp));
        }
        put(names::GROUP, values.text(&self.group));
        put(names::ATTEMPTS, values.number(self.attempts));
        if let Some(due) = self.due_at_ms {
            put(names::DUE_AT, values.number(due));
        }
        put(names::FIRST_FAILURE_AT, values.number(self.first_failure_at_ms));
        put(names::LAST_FAILURE_AT, values.number(self.last_failure_at_ms));
        put(
            names::ERROR_KIND,
            Bytes::from_static(self.error_kind.as_str().as_bytes()),
        );
        put(names::ERROR_MESSAGE, values.text(message));
        if let Some(replays) = self.replays {
            put(names::REPLAYS, values.number(replays));
        }
    }

    /// Reads the failure context from a retried or dead-lettered message's headers.
    pub fn from_headers(headers: &Headers) -> Result<Self, HeaderError> {
        Ok(Self {
            original_topic: required_str(headers, names::ORIGINAL_TOPIC)?.to_owned(),
            original_partition: required(headers, names::ORIGINAL_PARTITION)?,
            original_offset: required(headers, names::ORIGINAL_OFFSET)?,
            original_timestamp_ms: optional(headers, names::ORIGINAL_TIMESTAMP)?,
            group: required_str(headers, names::GROUP)?.to_owned(),
            attempts: required(headers, names::ATTEMPTS)?,
            due_at_ms: optional(headers, names::DUE_AT)?,
            first_failure_at_ms: required(headers, names::FIRST_FAILURE_AT)?,
            last_failure_at_ms: required(headers, names::LAST_FAILURE_AT)?,
            error_kind: {
                let text = required_str(headers, names::ERROR_KIND)?;
                ErrorKind::parse(text).ok_or_else(|| HeaderError::Invalid {
                    name: names::ERROR_KIND,
                    value: text.to_owned(),
                })?
            },
            error_message: required_str(headers, names::ERROR_MESSAGE)?.to_owned(),
            replays: optional(headers, names::REPLAYS)?,
        })
    }
}

fn required_str<'h>(headers: &'h Headers, name: &'static str) -> Result<&'h str, HeaderError> {
    let value = headers.get(name).ok_or(HeaderError::Missing(name))?;
    std::str::from_utf8(value).map_err(|_| HeaderError::Invalid {
        name,
        value: String::from_utf8_lossy(value).into_owned(),
    })
}

fn required<T: std::str::FromStr>(headers: &Headers, name: &'static str) -> Result<T, HeaderError> {
    let text = required_str(headers, name)?;
    text.parse().map_err(|_| HeaderError::Invalid {
        name,
        value: text.to_owned(),
    })
}

fn optional<T: std::str::FromStr>(headers: &Headers, name: &'static str) -> Result<Option<T>, HeaderError> {
    match headers.get(name) {
        None => Ok(None),
        Some(_) => required(headers, name).map(Some),
    }
}

/// `rk-due-at` of a retry, read leniently: `None` when absent or malformed.
pub(crate) fn due_at_ms(headers: &Headers) -> Option<i64> {
    parse_number(headers, names::DUE_AT)
}

/// `rk-replays`, read leniently: the one header that carries forward onto a main topic (a
/// replayed dead letter keeps its count).
pub(crate) fn replays(headers: &Headers) -> Option<u32> {
    parse_number(headers, names::REPLAYS)
}

/// What a record read on a retry level says about its earlier hops, read leniently: a value
/// that is missing or malformed is `None`, and the runtime falls back to the record's own
/// coordinates, so a damaged header never stops a retry. [`FailureContext::from_headers`] is
/// the strict reader, for tools that must know a header is wrong.
pub(crate) struct EarlierHops<'h> {
    pub(crate) original_topic: Option<&'h str>,
    pub(crate) original_partition: Option<u32>,
    pub(crate) original_offset: Option<u64>,
    pub(crate) original_timestamp_ms: Option<i64>,
    pub(crate) first_failure_at_ms: Option<i64>,
}

impl<'h> EarlierHops<'h> {
    pub(crate) fn read(headers: &'h Headers) -> Self {
        EarlierHops {
            original_topic: headers.get_str(names::ORIGINAL_TOPIC),
            original_partition: parse_number(headers, names::ORIGINAL_PARTITION),
            original_offset: parse_number(headers, names::ORIGINAL_OFFSET),
            original_timestamp_ms: parse_number(headers, names::ORIGINAL_TIMESTAMP),
            first_failure_at_ms: parse_number(headers, names::FIRST_FAILURE_AT),
        }
    }
}

/// Parses one numeric header leniently: `None` when absent or malformed.
fn parse_number<T: std::str::FromStr>(headers: &Headers, name: &str) -> Option<T> {
    headers.get_str(name).and_then(|text| text.parse().ok())
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
pub(crate) fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_on_char_boundary() {
        let text = "é".repeat(600); // 1200 bytes, 2 per char
        let cut = truncate_utf8(&text, MAX_ERROR_MESSAGE);
        assert_eq!(cut.len(), 1024);
        let text = format!("a{}", "é".repeat(600)); // odd offset: 1024 falls inside a char
        let cut = truncate_utf8(&text, MAX_ERROR_MESSAGE);
        assert_eq!(cut.len(), 1023);
        assert!(cut.ends_with('é'));
    }

    #[test]
    fn write_replaces_earlier_hop_and_keeps_foreign_headers() {
        let mut headers: Headers = [
            ("traceparent", "00-abc-def-01"),
            ("rk-attempts", "7"),
            ("tenant", "acme"),
            ("rk-error-kind", "panic"),
            ("rk-replay-origin", "orders.g.dlq/0/9"),
        ]
        .into_iter()
        .map(|(n, v)| (n, Bytes::from_static(v.as_bytes())))
        .collect();
        let context = FailureContext {
            original_topic: "orders".into(),
            original_partition: 0,
            original_offset: 5,
            original_timestamp_ms: None,
            group: "g".into(),
            attempts: 2,
            due_at_ms: None,
            first_failure_at_ms: 1,
            last_failure_at_ms: 2,
            error_kind: ErrorKind::Timeout,
            error_message: "x".repeat(5000),
            replays: Some(3),
        };
        context.write_to(&mut headers);
        let names: Vec<&str> = headers.iter().map(|(n, _)| n).collect();
        assert_eq!(&names[..3], ["traceparent", "tenant", "rk-replay-origin"]);
        assert_eq!(names.iter().filter(|n| **n == "rk-attempts").count(), 1);
        assert_eq!(headers.get_str("rk-attempts"), Some("2"));
        assert_eq!(headers.get("rk-due-at"), None);
        assert_eq!(headers.get("rk-original-timestamp"), None);
        assert_eq!(
            headers.get_str("rk-error-message").map(str::len),
            Some(MAX_ERROR_MESSAGE)
        );
        let back = FailureContext::from_headers(&headers).unwrap();
        assert_eq!(back.error_message.len(), MAX_ERROR_MESSAGE);
        assert_eq!(back.replays, Some(3));
        assert_eq!(back.error_kind, ErrorKind::Timeout);
    }

    #[test]
    fn reading_names_the_bad_header() {
        let headers: Headers = [("rk-original-topic", "orders"), ("rk-original-partition", "x")]
            .into_iter()
            .map(|(n, v)| (n, Bytes::from_static(v.as_bytes())))
            .collect();
        assert_eq!(
            FailureContext::from_headers(&headers).unwrap_err().to_string(),
            "header `rk-original-partition` has the invalid value \"x\""
        );
    }
}
