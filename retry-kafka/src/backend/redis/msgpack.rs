//! Just enough msgpack for a delay set's members and packed entries.
//!
//! A delay-set member is strings, written as Lua's `cmsgpack.pack` writes them (so the move
//! script's `cmsgpack.unpack` reads them) and read back. A packed entry (`rk-schema: 2`) is one
//! msgpack array, `[payload, key, name1, value1, ...]`: payload and key as bin (nil when
//! absent), header names as str, values as bin; any msgpack reader shows it.

use std::borrow::Cow;
use std::ops::Range;

use crate::headers::Headers;

/// `cmsgpack.pack(stream, member_id, name1, value1, ...)`: the values one after another.
pub(crate) fn pack<V: AsRef<[u8]>>(stream: &str, member_id: &str, fields: &[(Cow<'_, str>, V)]) -> Vec<u8> {
    let size = stream.len()
        + member_id.len()
        + fields
            .iter()
            .map(|(n, v)| n.len() + v.as_ref().len() + 10)
            .sum::<usize>();
    let mut out = Vec::with_capacity(size + 10);
    push(&mut out, stream.as_bytes());
    push(&mut out, member_id.as_bytes());
    for (name, value) in fields {
        push(&mut out, name.as_bytes());
        push(&mut out, value.as_ref());
    }
    out
}

/// A msgpack family's tags: the fixed-size form (for lengths below 32), then those with an 8-,
/// 16- and 32-bit length.
struct Tags {
    fixed: Option<u8>,
    sized: [u8; 3],
}

const STR: Tags = Tags {
    fixed: Some(0xa0),
    sized: [0xd9, 0xda, 0xdb],
};
const BIN: Tags = Tags {
    fixed: None,
    sized: [0xc4, 0xc5, 0xc6],
};

/// One string, in the shortest form lua-cmsgpack 0.4 (Redis's) writes.
fn push(out: &mut Vec<u8>, bytes: &[u8]) {
    push_as(out, bytes, &STR);
}

/// One bin, in the shortest form.
fn push_bin(out: &mut Vec<u8>, bytes: &[u8]) {
    push_as(out, bytes, &BIN);
}

fn push_as(out: &mut Vec<u8>, bytes: &[u8], tags: &Tags) {
    let len = bytes.len();
    match tags.fixed {
        Some(fixed) if len < 32 => out.push(fixed | len as u8),
        _ if len <= 0xff => out.extend_from_slice(&[tags.sized[0], len as u8]),
        _ if len <= 0xffff => {
            out.push(tags.sized[1]);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(tags.sized[2]);
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
    }
    out.extend_from_slice(bytes);
}

/// A record as one msgpack array: `[payload, key, name1, value1, ...]`.
pub(crate) fn pack_entry(payload: Option<&[u8]>, key: Option<&[u8]>, headers: &Headers) -> Vec<u8> {
    let size = payload.map_or(1, |p| p.len() + 5)
        + key.map_or(1, |k| k.len() + 5)
        + headers.iter().map(|(n, v)| n.len() + v.len() + 10).sum::<usize>();
    let mut out = Vec::with_capacity(size + 5);
    let items = 2 + 2 * headers.len();
    if items < 16 {
        out.push(0x90 | items as u8);
    } else if items <= 0xffff {
        out.push(0xdc);
        out.extend_from_slice(&(items as u16).to_be_bytes());
    } else {
        out.push(0xdd);
        out.extend_from_slice(&(items as u32).to_be_bytes());
    }
    for bytes in [payload, key] {
        match bytes {
            Some(bytes) => push_bin(&mut out, bytes),
            None => out.push(0xc0),
        }
    }
    for (name, value) in headers.iter() {
        push(&mut out, name.as_bytes());
        push_bin(&mut out, value);
    }
    out
}

/// Where each item of a packed entry is in `data`: payload, key (`None` for nil), then names
/// and values. `None` unless `data` is exactly one array of strings, bins and nils.
pub(crate) fn entry_items(data: &[u8]) -> Option<Vec<Option<Range<usize>>>> {
    let (&tag, _) = data.split_first()?;
    let (items, mut at) = match tag {
        0x90..=0x9f => ((tag & 0x0f) as usize, 1),
        0xdc => (u16::from_be_bytes(data.get(1..3)?.try_into().ok()?) as usize, 3),
        0xdd => (u32::from_be_bytes(data.get(1..5)?.try_into().ok()?) as usize, 5),
        _ => return None,
    };
    let mut out = Vec::with_capacity(items.min(data.len()));
    for _ in 0..items {
        let tag = *data.get(at)?;
        at += 1;
        let len = match tag {
            0xc0 => {
                out.push(None);
                continue;
            }
            0xa0..=0xbf => (tag & 0x1f) as usize,
            0xd9 | 0xc4 => {
                at += 1;
                *data.get(at - 1)? as usize
            }
            0xda | 0xc5 => {
                at += 2;
                u16::from_be_bytes(data.get(at - 2..at)?.try_into().ok()?) as usize
            }
            0xdb | 0xc6 => {
                at += 4;
                u32::from_be_bytes(data.get(at - 4..at)?.try_into().ok()?) as usize
            }
            _ => return None,
        };
        let end = at.checked_add(len).filter(|&end| end <= data.len())?;
        out.push(Some(at..end));
        at = end;
    }
    (at == data.len()).then_some(out)
}

pub(crate) fn strings(mut data: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    while let Some((&tag, rest)) = data.split_first() {
        let (len, rest) = match tag {
            0xa0..=0xbf => ((tag & 0x1f) as usize, rest),
            0xd9 | 0xc4 => (*rest.first()? as usize, &rest[1..]),
            0xda | 0xc5 => (
                u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize,
                &rest[2..],
            ),
            0xdb | 0xc6 => (
                u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize,
                &rest[4..],
            ),
            _ => return None,
        };
        out.push(rest.get(..len)?.to_vec());
        data = &rest[len..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use crate::backend::redis::msgpack;
    use crate::headers::Headers;

    #[test]
    fn msgpack_pack_reads_back_in_every_length_form() {
        let long = vec![7u8; 70_000];
        let fields = [
            (Cow::Borrowed("payload"), &[b'x'; 40][..]),
            (Cow::Borrowed("rk-error-message"), &[b'e'; 300][..]),
            (Cow::Borrowed("h:key"), &long[..]),
            (Cow::Borrowed("empty"), &[][..]),
        ];
        let packed = msgpack::pack("{orders.retry.1}:0", "src/g/1-0", &fields);
        assert_eq!(&packed[..2], &[0xa0 | 18, b'{']);
        let strings = msgpack::strings(&packed).unwrap();
        assert_eq!(strings.len(), 2 + 2 * fields.len());
        assert_eq!(strings[0], b"{orders.retry.1}:0");
        assert_eq!(strings[1], b"src/g/1-0");
        for (i, (name, value)) in fields.iter().enumerate() {
            assert_eq!(strings[2 + 2 * i], name.as_bytes());
            assert_eq!(strings[3 + 2 * i], *value);
        }
    }

    #[test]
    fn a_packed_entry_reads_back_in_every_length_form() {
        let long = vec![7u8; 70_000];
        let headers: Vec<(String, Vec<u8>)> = (0..20)
            .map(|i| {
                (
                    format!("h{i}"),
                    if i == 3 { long.clone() } else { vec![b'v'; i * 20] },
                )
            })
            .collect();
        let mut all = Headers::new();
        for (name, value) in &headers {
            all.insert(name.clone(), value.clone());
        }
        let packed = msgpack::pack_entry(Some(&[1, 2, 3][..]), None, &all);
        assert_eq!(&packed[..3], &[0xdc, 0, 42]);
        let items = msgpack::entry_items(&packed).unwrap();
        assert_eq!(items.len(), 42);
        assert_eq!(&packed[items[0].clone().unwrap()], &[1, 2, 3]);
        assert_eq!(items[1], None);
        for (i, (name, value)) in headers.iter().enumerate() {
            assert_eq!(&packed[items[2 + 2 * i].clone().unwrap()], name.as_bytes());
            assert_eq!(&packed[items[3 + 2 * i].clone().unwrap()], &value[..]);
        }
        let small = msgpack::pack_entry(None, Some(&b"k"[..]), &Headers::new());
        assert_eq!(small, [0x92, 0xc0, 0xc4, 1, b'k']);
        assert_eq!(msgpack::entry_items(&small[..4]), None);
        assert_eq!(msgpack::entry_items(b"plain text"), None);
    }

    #[test]
    fn msgpack_strings_read_every_length_form() {
        let long = vec![b'x'; 70_000];
        let mut data = vec![
            0xa3, b'a', b'b', b'c', 0xd9, 2, b'h', b'i', 0xda, 0, 1, b'!', 0xdb,
        ];
        data.extend_from_slice(&(long.len() as u32).to_be_bytes());
        data.extend_from_slice(&long);
        let strings = msgpack::strings(&data).unwrap();
        assert_eq!(strings[..3], [b"abc".to_vec(), b"hi".to_vec(), b"!".to_vec()]);
        assert_eq!(strings[3].len(), 70_000);
        assert_eq!(msgpack::strings(&[0xa5, b'a']), None);
    }
}
