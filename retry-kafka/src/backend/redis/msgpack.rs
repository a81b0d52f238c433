//! Just enough msgpack for a delay set's members: strings, written as Lua's `cmsgpack.pack`
//! writes them (so the move script's `cmsgpack.unpack` reads them) and read back.

use std::borrow::Cow;

/// `cmsgpack.pack(stream, member_id, name1, value1, ...)`: the values one after another.
pub(crate) fn pack(stream: &str, member_id: &str, fields: &[(Cow<'_, str>, &[u8])]) -> Vec<u8> {
    let size =
        stream.len() + member_id.len() + fields.iter().map(|(n, v)| n.len() + v.len() + 10).sum::<usize>();
    let mut out = Vec::with_capacity(size + 10);
    push(&mut out, stream.as_bytes());
    push(&mut out, member_id.as_bytes());
    for (name, value) in fields {
        push(&mut out, name.as_bytes());
        push(&mut out, value);
    }
    out
}

/// One string, in the shortest form lua-cmsgpack 0.4 (Redis's) writes.
fn push(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = bytes.len();
    if len < 32 {
        out.push(0xa0 | len as u8);
    } else if len <= 0xff {
        out.extend_from_slice(&[0xd9, len as u8]);
    } else if len <= 0xffff {
        out.push(0xda);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
    out.extend_from_slice(bytes);
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
