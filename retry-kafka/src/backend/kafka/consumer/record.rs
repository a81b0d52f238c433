//! A fetched message as a [`Record`]: its bytes copied once out of librdkafka's buffer into an
//! [`Arena`] the poll thread (and Browse's reader) keeps.

use bytes::{BufMut as _, Bytes, BytesMut};
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};

use crate::backend::Record;
use crate::headers::Headers;

/// A fetched message as a [`Record`]: its bytes copied once out of librdkafka's buffer (which
/// a record may outlive by minutes, waiting for its due time), into `arena`.
pub(crate) fn record_of(message: &BorrowedMessage<'_>, arena: &mut Arena) -> Record {
    let headers = message
        .headers()
        .map(|headers| {
            let mut copied = Headers::with_capacity(headers.count());
            for header in headers.iter() {
                copied.insert_read(header.key, arena.copy(header.value.unwrap_or_default()));
            }
            copied
        })
        .unwrap_or_default();
    Record {
        partition: message.partition() as u32,
        offset: message.offset() as u64,
        timestamp_ms: message.timestamp().to_millis(),
        key: message.key().map(|key| arena.copy(key)),
        payload: message.payload().map(|payload| arena.copy(payload)),
        headers,
    }
}

/// Where the poll thread copies fetched bytes: one buffer shared by the keys, payloads and
/// header values of consecutive records, each a view of it. Profiled, two or more allocations
/// per record (made on the poll thread, freed on the runtime's) were most of what the copy
/// cost. A chunk lives while any record in it does; records are consecutive, so a chunk of
/// 16 KiB pins little, and a value over a quarter of it gets an allocation of its own.
#[derive(Default)]
pub(crate) struct Arena(BytesMut);

impl Arena {
    const CHUNK: usize = 16 * 1024;

    fn copy(&mut self, bytes: &[u8]) -> Bytes {
        if bytes.is_empty() {
            return Bytes::new();
        }
        if bytes.len() > Self::CHUNK / 4 {
            return Bytes::copy_from_slice(bytes);
        }
        if self.0.capacity() < bytes.len() {
            self.0 = BytesMut::with_capacity(Self::CHUNK);
        }
        self.0.put_slice(bytes);
        self.0.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::Arena;

    #[test]
    fn copies_keep_their_bytes_across_chunks_and_large_values_stand_alone() {
        let mut arena = Arena::default();
        // ~100 KiB in all: several chunks.
        let values: Vec<Vec<u8>> = (0..3000)
            .map(|n| format!("value-{n};").repeat(n % 7 + 1).into_bytes())
            .collect();
        let copies: Vec<_> = values.iter().map(|value| arena.copy(value)).collect();
        for (value, copy) in values.iter().zip(&copies) {
            assert_eq!(&copy[..], &value[..]);
        }
        let large = vec![7u8; Arena::CHUNK];
        assert_eq!(&arena.copy(&large)[..], &large[..]);
        assert!(arena.copy(&[]).is_empty());
        // Earlier views are unchanged by later copies.
        assert_eq!(&copies[0][..], b"value-0;");
    }
}
