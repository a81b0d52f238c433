//! The field codec: a record as stream fields and back, and a delay-set member.
//!
//! An entry's fields are `payload`, `key` (absent when there is none) and one field per header
//! under the header's name (`rk-attempts`, `traceparent`, …; a header named `payload`, `key` or
//! `h:…` is written as `h:<name>`). A delay-set member is the target stream, a member ID that
//! keeps members apart, then the fields, packed as msgpack strings for the move script.

use std::borrow::Cow;

use bytes::Bytes;

use super::msgpack;
use super::stream_id::StreamId;
use crate::backend::{OutboundRecord, Record};
use crate::headers::Headers;

/// An entry's fields, names and values as stored.
pub(crate) type Fields = Vec<(Vec<u8>, Vec<u8>)>;

const PAYLOAD: &str = "payload";
const KEY: &str = "key";
const ESCAPE: &str = "h:";

/// A record as stream fields.
pub(crate) fn encode(record: &OutboundRecord) -> Vec<(Cow<'_, str>, &[u8])> {
    let mut fields = Vec::with_capacity(record.headers.len() + 2);
    if let Some(payload) = &record.payload {
        fields.push((Cow::Borrowed(PAYLOAD), &payload[..]));
    }
    if let Some(key) = &record.key {
        fields.push((Cow::Borrowed(KEY), &key[..]));
    }
    for (name, value) in record.headers.iter() {
        let name = if name == PAYLOAD || name == KEY || name.starts_with(ESCAPE) {
            Cow::Owned(format!("{ESCAPE}{name}"))
        } else {
            Cow::Borrowed(name)
        };
        fields.push((name, value));
    }
    if fields.is_empty() {
        // A stream entry needs a field: nothing at all is written as an empty payload.
        fields.push((Cow::Borrowed(PAYLOAD), &[][..]));
    }
    fields
}

/// Stream fields as a record.
pub(crate) fn decode(partition: u32, id: StreamId, fields: Fields) -> Record {
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
    Record {
        partition,
        offset: id.offset(),
        timestamp_ms: Some(id.ms as i64),
        key,
        payload,
        headers,
    }
}

/// A delay-set member: the stream the entry goes to when due, an ID that keeps members with
/// the same fields apart, then the fields.
pub(crate) fn pack_delayed(stream: &str, member_id: &str, fields: &[(Cow<'_, str>, &[u8])]) -> Vec<u8> {
    msgpack::pack(stream, member_id, fields)
}

/// A delay-set member: (partition, fields).
pub(crate) fn unpack_delayed(member: &[u8]) -> Option<(u32, Fields)> {
    let mut items = msgpack::strings(member)?.into_iter();
    let stream = items.next()?;
    let partition = std::str::from_utf8(&stream)
        .ok()?
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
        let fields: Fields = encode(&record)
            .into_iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.to_vec()))
            .collect();
        assert_eq!(fields[2].0, b"h:payload");
        let decoded = decode(3, StreamId { ms: 5, seq: 1 }, fields);
        assert_eq!(decoded.payload, record.payload);
        assert_eq!(decoded.key, record.key);
        assert_eq!(decoded.headers, headers);
        assert_eq!((decoded.partition, decoded.timestamp_ms), (3, Some(5)));
    }
}
