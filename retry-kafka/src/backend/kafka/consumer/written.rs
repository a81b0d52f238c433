//! Exactly-once's offset map: the records of a partition at or above its committed offset
//! whose hand-offs are written, kept in the commit's metadata.
//!
//! A partition's committed offset is its acknowledged prefix, which trails the hand-offs: a
//! record handed on while an earlier one still runs is written in the transaction, but the
//! offset committed with it stays below it. Its offset goes into the commit's metadata
//! instead, so the member that reads the partition next (this one after an abort, another
//! after a rebalance or a crash) skips it rather than handing it on twice. Confluent's Parallel
//! Consumer keeps its completed offsets the same way.
//!
//! The metadata is `rk-written-1:` and runs of offsets from the committed one on: the count
//! of offsets passed over, then the count written, and so on (`rk-written-1:3,2,10,1` is the
//! committed offset + 3 and + 4, and + 15). A failure rate's scattered hand-offs take a few
//! characters each, an outage's run of them a few in all.

use std::collections::BTreeSet;
use std::fmt::Write as _;

const PREFIX: &str = "rk-written-1:";

/// What a broker keeps of a commit's metadata by default (`offset.metadata.max.bytes`): a
/// commit whose map is longer waits until the acknowledged prefix has caught up.
pub(super) const METADATA_LIMIT: usize = 4096;

/// One partition's written records at or above its committed offset.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Written(BTreeSet<u64>);

impl Written {
    pub(super) fn insert(&mut self, offset: u64) {
        self.0.insert(offset);
    }

    pub(super) fn contains(&self, offset: u64) -> bool {
        self.0.contains(&offset)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Forgets the records below `committed`: the offset counts them as concluded.
    pub(super) fn prune(&mut self, committed: u64) {
        self.0 = self.0.split_off(&committed);
    }

    /// The metadata of a commit at `committed` (empty when nothing above it is written).
    pub(super) fn encode(&self, committed: u64) -> String {
        let mut metadata = String::new();
        let mut next = committed;
        let mut run: Option<(u64, u64)> = None;
        let push = |metadata: &mut String, gap: u64, length: u64| {
            let separator = if metadata.is_empty() { PREFIX } else { "," };
            let _ = write!(metadata, "{separator}{gap},{length}");
        };
        for &offset in self.0.range(committed..) {
            match &mut run {
                Some((_, length)) if offset == next => *length += 1,
                _ => {
                    if let Some((gap, length)) = run.take() {
                        push(&mut metadata, gap, length);
                    }
                    run = Some((offset - next, 1));
                }
            }
            next = offset + 1;
        }
        if let Some((gap, length)) = run {
            push(&mut metadata, gap, length);
        }
        metadata
    }

    /// The written records a commit at `committed` carries in its `metadata`; none when it is
    /// empty or not retry-kafka's (a commit made by another client).
    pub(super) fn decode(committed: u64, metadata: &str) -> Self {
        let mut written = Self::default();
        let Some(runs) = metadata.strip_prefix(PREFIX) else {
            return written;
        };
        let numbers: Option<Vec<u64>> = runs.split(',').map(|n| n.parse().ok()).collect();
        let Some(numbers) = numbers.filter(|numbers| numbers.len() % 2 == 0) else {
            tracing::warn!(
                metadata,
                "a committed offset's written records do not read; none skipped"
            );
            return written;
        };
        let mut next = committed;
        for pair in numbers.chunks(2) {
            let start = next.saturating_add(pair[0]);
            next = start.saturating_add(pair[1]);
            written.0.extend(start..next);
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(offsets: &[u64]) -> Written {
        let mut written = Written::default();
        for &offset in offsets {
            written.insert(offset);
        }
        written
    }

    #[test]
    fn runs_from_the_committed_offset_read_back_as_written() {
        let cases: [(&[u64], &str); 4] = [
            (&[], ""),
            (&[103, 104, 115], "rk-written-1:3,2,10,1"),
            (&[100], "rk-written-1:0,1"),
            (&[100, 101, 102, 103, 200], "rk-written-1:0,4,96,1"),
        ];
        for (offsets, metadata) in cases {
            let map = written(offsets);
            assert_eq!(map.encode(100), metadata);
            assert_eq!(Written::decode(100, metadata), map, "{metadata}");
        }
        // Below the committed offset: concluded by it, not in the map.
        assert_eq!(written(&[7, 99, 100]).encode(100), "rk-written-1:0,1");
        // An outage's run of 10,000 hand-offs takes a few characters.
        let run = written(&(100..10_100).collect::<Vec<_>>());
        assert_eq!(run.encode(100), "rk-written-1:0,10000");
    }

    #[test]
    fn a_pruned_map_keeps_what_is_at_or_above_the_offset() {
        let mut map = written(&[5, 9, 10, 20]);
        map.prune(10);
        assert_eq!(map, written(&[10, 20]));
        assert!(map.contains(20) && !map.contains(9));
    }

    #[test]
    fn metadata_that_is_not_a_map_skips_nothing() {
        for metadata in ["", "someone else's", "rk-written-1:3", "rk-written-1:a,1"] {
            assert!(Written::decode(0, metadata).is_empty(), "{metadata}");
        }
    }
}
