//! Reading the server's replies: entries, groups, pending lists.

use redis::Value;

use super::fields::Fields;
use super::stream_id::StreamId;

/// `[[id, [field, value, ...]], ...]` as entries; an entry whose fields are nil (deleted while
/// pending) has none.
pub(crate) fn parse_entries(value: Value) -> Vec<(StreamId, Fields)> {
    let Value::Array(entries) = value else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|entry| {
            let Value::Array(parts) = entry else { return None };
            let mut parts = parts.into_iter();
            let id = StreamId::parse(bytes_of(&parts.next()?)?)?;
            let fields = match parts.next() {
                // The client's buffers move into the record: no copy per field.
                Some(Value::Array(flat)) => {
                    let mut fields = Vec::with_capacity(flat.len() / 2);
                    let mut flat = flat.into_iter();
                    while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
                        if let (Some(name), Some(value)) = (into_bytes(name), into_bytes(value)) {
                            fields.push((name, value));
                        }
                    }
                    fields
                }
                _ => Vec::new(),
            };
            Some((id, fields))
        })
        .collect()
}

pub(crate) fn into_bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.into_bytes()),
        _ => None,
    }
}

pub(crate) fn bytes_of(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.as_bytes()),
        _ => None,
    }
}

/// One group as `XINFO GROUPS` describes it.
pub(crate) struct GroupInfo {
    pub(crate) name: Vec<u8>,
    pub(crate) pending: u64,
    pub(crate) last_delivered: StreamId,
    /// Entries not yet delivered to the group; unknown after some deletions.
    pub(crate) lag: Option<u64>,
}

pub(crate) fn parse_groups(value: &Value) -> Vec<GroupInfo> {
    let Value::Array(groups) = value else {
        return Vec::new();
    };
    groups
        .iter()
        .filter_map(|group| {
            let pairs: Vec<(&[u8], &Value)> = match group {
                Value::Array(flat) => flat
                    .chunks(2)
                    .filter_map(|p| Some((bytes_of(&p[0])?, p.get(1)?)))
                    .collect(),
                Value::Map(map) => map.iter().filter_map(|(k, v)| Some((bytes_of(k)?, v))).collect(),
                _ => return None,
            };
            let field = |name: &str| pairs.iter().find(|(k, _)| *k == name.as_bytes()).map(|(_, v)| *v);
            let number = |name: &str| match field(name)? {
                Value::Int(n) => u64::try_from(*n).ok(),
                other => std::str::from_utf8(bytes_of(other)?).ok()?.parse().ok(),
            };
            Some(GroupInfo {
                name: bytes_of(field("name")?)?.to_vec(),
                pending: number("pending").unwrap_or(0),
                last_delivered: field("last-delivered-id")
                    .and_then(bytes_of)
                    .and_then(StreamId::parse)
                    .unwrap_or(StreamId::ZERO),
                lag: number("lag"),
            })
        })
        .collect()
}

/// The IDs of an extended XPENDING reply (`[[id, consumer, idle, deliveries], ...]`).
pub(crate) fn pending_ids(value: &Value) -> Vec<String> {
    let Value::Array(entries) = value else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|entry| match entry {
            Value::Array(parts) => Some(String::from_utf8_lossy(bytes_of(parts.first()?)?).into_owned()),
            _ => None,
        })
        .collect()
}

/// `[[key, entries], ...]` of an XREADGROUP reply (nil when nothing came).
pub(crate) fn stream_replies(value: Value) -> Vec<(Vec<u8>, Value)> {
    match value {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(pair) => {
                    let mut pair = pair.into_iter();
                    Some((into_bytes(pair.next()?)?, pair.next()?))
                }
                _ => None,
            })
            .collect(),
        Value::Map(map) => map
            .into_iter()
            .filter_map(|(k, v)| Some((into_bytes(k)?, v)))
            .collect(),
        _ => Vec::new(),
    }
}
