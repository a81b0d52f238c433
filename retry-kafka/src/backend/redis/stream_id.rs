//! Stream entry IDs and their arithmetic: an ID as an offset, its neighbours.

/// A stream entry ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct StreamId {
    pub(crate) ms: u64,
    pub(crate) seq: u64,
}

/// Bits of an offset that hold the ID's sequence number.
const SEQ_BITS: u32 = 20;

impl StreamId {
    pub(crate) const ZERO: StreamId = StreamId { ms: 0, seq: 0 };

    pub(crate) fn parse(text: &[u8]) -> Option<StreamId> {
        let text = std::str::from_utf8(text).ok()?;
        let (ms, seq) = text.split_once('-')?;
        Some(StreamId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// The ID as an offset: `ms × 2^20 + seq`. Sequence numbers past 2^20 - 1 (only IDs a
    /// writer chose itself) share the last offset of their millisecond.
    pub(crate) fn offset(self) -> u64 {
        (self.ms << SEQ_BITS) | self.seq.min((1 << SEQ_BITS) - 1)
    }

    /// The smallest ID whose offset is `offset` (the inverse of [`offset`](Self::offset)).
    pub(crate) fn of_offset(offset: u64) -> StreamId {
        StreamId {
            ms: offset >> SEQ_BITS,
            seq: offset & ((1 << SEQ_BITS) - 1),
        }
    }

    /// The ID just before this one, for "entries after" reads that must include this one.
    pub(crate) fn before(self) -> StreamId {
        match (self.ms, self.seq) {
            (0, 0) => self,
            (ms, 0) => StreamId {
                ms: ms - 1,
                seq: u64::MAX,
            },
            (ms, seq) => StreamId { ms, seq: seq - 1 },
        }
    }

    /// The ID just after this one.
    pub(crate) fn after(self) -> StreamId {
        match self.seq.checked_add(1) {
            Some(seq) => StreamId { ms: self.ms, seq },
            None => StreamId {
                ms: self.ms + 1,
                seq: 0,
            },
        }
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_follow_stream_order_and_round_trip_neighbours() {
        let a = StreamId {
            ms: 1_700_000_000_000,
            seq: 0,
        };
        let b = StreamId {
            ms: 1_700_000_000_000,
            seq: 7,
        };
        let c = StreamId {
            ms: 1_700_000_000_001,
            seq: 0,
        };
        assert!(a.offset() < b.offset() && b.offset() < c.offset());
        assert_eq!(b.offset() >> SEQ_BITS, b.ms);
        assert_eq!(
            c.before(),
            StreamId {
                ms: 1_700_000_000_000,
                seq: u64::MAX
            }
        );
        assert_eq!(c.before().after(), c);
        assert_eq!(StreamId::parse(b"12-3"), Some(StreamId { ms: 12, seq: 3 }));
        assert_eq!(StreamId::parse(b"12"), None);
    }
}
