//! The field codec: a record as stream fields and back, and a delay-set member.
//!
//! An entry has one of two layouts (ARCHITECTURE.md, Wire format, Redis entries):
//!
//! - **field per value** (`rk-schema: 1`; main topics, dead letters, parked entries): `payload`,
//!   `key` (absent when there is none) and one field per header under the header's name
//!   (`rk-attempts`, `traceparent`, …; a header named `payload`, `key` or `h:…` is written as
//!   `h:<name>`);
//! - **packed** (`rk-schema: 2`; retry levels): two fields, `rk-schema` = `2` and `rk-entry`,
//!   the record as one msgpack array (`msgpack.rs`), so a reply carries 4 values per entry
//!   instead of one per header, and the payload and header values are slices of one buffer.
//!
//! [`decode`] reads both, whatever the stream: entries written by the previous release stay
//! readable. A delay-set member is the target stream, a member ID that keeps members apart,
//! then the fields, packed as msgpack strings for the move script.

use std::borrow::Cow;

use bytes::Bytes;

use super::msgpack;
use super::stream_id::StreamId;
use crate::backend::{OutboundRecord, Record, TopicRole};
use crate::headers::Headers;

/// An entry's fields, names and values as stored.
pub(crate) type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// An entry's fields as written: names and values, borrowed from the record where they can be.
pub(crate) type Encoded<'a> = Vec<(Cow<'a, str>, Cow<'a, [u8]>)>;

const PAYLOAD: &str = "payload";
const KEY: &str = "key";
const ESCAPE: &str = "h:";
/// A packed entry's first field, and its value.
const SCHEMA: &str = "rk-schema";
const PACKED: &[u8] = b"2";
/// A packed entry's second field: the record.
const ENTRY: &str = "rk-entry";

/// How a topic's entries are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `rk-schema: 1`, a field per value: the public format of main topics, which users'
    /// producers write, and of dead-letter and parking streams, which operators read with
    /// `redis-cli` (the failure context as text fields).
    FieldPerValue,
    /// `rk-schema: 2`: the record as one msgpack field; a retry level's (and a held topic's) entries, written and
    /// read only by the framework, on the failure path's hot loop.
    Packed,
}

impl Layout {
    pub(crate) fn of(role: TopicRole) -> Layout {
        match role {
            TopicRole::Retry { .. } | TopicRole::Held => Layout::Packed,
            TopicRole::Main | TopicRole::DeadLetter | TopicRole::Parked => Layout::FieldPerValue,
        }
    }
}

/// A record as stream fields, in `layout`.
pub(crate) fn encode(record: &OutboundRecord, layout: Layout) -> Encoded<'_> {
    if layout == Layout::Packed {
        let entry = msgpack::pack_entry(record.payload.as_deref(), record.key.as_deref(), &record.headers);
        return vec![
            (Cow::Borrowed(SCHEMA), Cow::Borrowed(PACKED)),
            (Cow::Borrowed(ENTRY), Cow::Owned(entry)),
        ];
    }
    let mut fields: Encoded<'_> = Vec::with_capacity(record.headers.len() + 2);
    if let Some(payload) = &record.payload {
        fields.push((Cow::Borrowed(PAYLOAD), Cow::Borrowed(&payload[..])));
    }
    if let Some(key) = &record.key {
        fields.push((Cow::Borrowed(KEY), Cow::Borrowed(&key[..])));
    }
    for (name, value) in record.headers.iter() {
        let name = if name == PAYLOAD || name == KEY || name.starts_with(ESCAPE) {
            Cow::Owned(format!("{ESCAPE}{name}"))
        } else {
            Cow::Borrowed(name)
        };
        fields.push((name, Cow::Borrowed(value)));
    }
    if fields.is_empty() {
        // A stream entry needs a field: nothing at all is written as an empty payload.
        fields.push((Cow::Borrowed(PAYLOAD), Cow::Borrowed(&[][..])));
    }
    fields
}

/// Stream fields as a record: a packed entry, or else a field per value.
pub(crate) fn decode(partition: u32, id: StreamId, mut fields: Fields) -> Record {
    let (key, payload, headers) = match unpack(&mut fields) {
        Some(parts) => parts,
        None => read_fields(fields),
    };
    Record {
        partition,
        offset: id.offset(),
        timestamp_ms: Some(id.ms as i64),
        key,
        payload,
        headers,
    }
}

/// A record's parts: key, payload, headers.
type Parts = (Option<Bytes>, Option<Bytes>, Headers);

/// A packed entry's parts, each a slice of the one buffer; `None` (and `fields` untouched)
/// unless the fields are exactly `rk-schema` = `2` and an `rk-entry` that reads as one.
fn unpack(fields: &mut Fields) -> Option<Parts> {
    let [(schema, version), (entry, packed)] = &fields[..] else {
        return None;
    };
    if schema != SCHEMA.as_bytes() || version != PACKED || entry != ENTRY.as_bytes() {
        return None;
    }
    let items = msgpack::entry_items(packed).filter(|i| i.len() >= 2 && i.len() % 2 == 0)?;
    if items[2..]
        .chunks(2)
        .any(|pair| pair[0].is_none() || pair[1].is_none())
    {
        return None;
    }
    let data = Bytes::from(std::mem::take(&mut fields[1].1));
    let mut items = items.into_iter();
    let mut next = || items.next().flatten().map(|range| data.slice(range));
    let payload = next();
    let key = next();
    let mut headers = Headers::new();
    while let (Some(name), Some(value)) = (next(), next()) {
        match std::str::from_utf8(&name) {
            Ok(name) => headers.insert_read(name, value),
            Err(_) => headers.insert(String::from_utf8_lossy(&name).into_owned(), value),
        }
    }
    Some((key, payload, headers))
}

/// The parts of an entry written a field per value.
fn read_fields(fields: Fields) -> Parts {
    let mut payload = None;
    let mut key = None;
    let mut headers = Headers::new();
    for (name, value) in fields {
        match &name[..] {
            b"payload" if payload.is_none() => payload = Some(Bytes::from(value)),
            b"key" if key.is_none() => key = Some(Bytes::from(value)),
            _ => {
                let name = String::from_utf8(name)
                    .unwrap_or_else(|invalid| String::from_utf8_lossy(invalid.as_bytes()).into_owned());
                let name = match name.strip_prefix(ESCAPE) {
                    Some(escaped) => escaped.to_owned(),
                    None => name,
                };
                headers.insert(name, Bytes::from(value));
            }
        }
    }
    (key, payload, headers)
}

/// A delay-set member: the stream the entry goes to when due, an ID that keeps members with
/// the same fields apart, then the fields.
pub(crate) fn pack_delayed(stream: &str, member_id: &str, fields: &Encoded<'_>) -> Vec<u8> {
    msgpack::pack(stream, member_id, fields)
}

/// A delay-set member: (partition, fields).
pub(crate) fn unpack_delayed(member: &[u8]) -> Option<(u32, Fields)> {
    let mut items = msgpack::strings(member)?.into_iter();
    let stream = items.next()?;
    // `{topic}:3`, or on a cluster `{topic:3}` (keys.rs).
    let partition = std::str::from_utf8(&stream)
        .ok()?
        .trim_end_matches('}')
        .rsplit(':')
        .next()?
        .parse()
        .ok()?;
    let _member_id = items.next()?;
    let mut fields = Vec::new();
    while let (Some(name), Some(value)) = (items.next(), items.next()) {
        fields.push((name, value));
    }
    Some((partition, fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delayed_member_names_its_partition_in_either_key_layout() {
        let fields: Encoded<'_> = vec![(Cow::Borrowed("rk-attempts"), Cow::Borrowed(&b"1"[..]))];
        for stream in ["{orders.b.retry.1}:3", "{orders.b.retry.1:3}"] {
            let (partition, unpacked) = unpack_delayed(&pack_delayed(stream, "id", &fields)).expect(stream);
            assert_eq!((partition, unpacked.len()), (3, 1), "{stream}");
        }
    }

    #[test]
    fn fields_round_trip_including_reserved_header_names() {
        let mut headers = Headers::new();
        headers.insert("payload", "a header named payload");
        headers.insert("h:x", "escaped too");
        headers.insert("rk-attempts", "2");
        let record = OutboundRecord {
            partition: None,
            key: Some(Bytes::from_static(b"k\x00")),
            payload: Some(Bytes::from_static(b"\xff\xfe body")),
            headers: headers.clone(),
        };
        for layout in [Layout::FieldPerValue, Layout::Packed] {
            let fields = stored(encode(&record, layout));
            match layout {
                Layout::FieldPerValue => assert_eq!(fields[2].0, b"h:payload"),
                Layout::Packed => assert_eq!(
                    (&fields[0].0[..], &fields[0].1[..]),
                    (&b"rk-schema"[..], &b"2"[..])
                ),
            }
            let decoded = decode(3, StreamId { ms: 5, seq: 1 }, fields);
            assert_eq!(decoded.payload, record.payload);
            assert_eq!(decoded.key, record.key);
            assert_eq!(decoded.headers, headers);
            assert_eq!((decoded.partition, decoded.timestamp_ms), (3, Some(5)));
        }
    }

    fn stored(encoded: Encoded<'_>) -> Fields {
        encoded
            .into_iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.into_owned()))
            .collect()
    }

    #[test]
    fn a_packed_entry_keeps_a_null_payload_and_no_key_apart_from_empty_ones() {
        for (payload, key) in [(None, None), (Some(Bytes::new()), Some(Bytes::new()))] {
            let record = OutboundRecord {
                partition: None,
                key: key.clone(),
                payload: payload.clone(),
                headers: Headers::new(),
            };
            let decoded = decode(0, StreamId::ZERO, stored(encode(&record, Layout::Packed)));
            assert_eq!((decoded.payload, decoded.key), (payload, key));
        }
    }

    #[test]
    fn fields_that_only_look_packed_are_read_a_field_per_value() {
        // A main-topic entry a producer wrote with these two headers and no payload.
        let fields = vec![
            (b"rk-schema".to_vec(), b"2".to_vec()),
            (b"rk-entry".to_vec(), b"not msgpack".to_vec()),
        ];
        let decoded = decode(0, StreamId::ZERO, fields);
        assert_eq!(decoded.payload, None);
        assert_eq!(decoded.headers.get("rk-entry"), Some(&b"not msgpack"[..]));
    }
}
