//! Trimming: deleting what every group acknowledged, past the retention.

use redis::{RedisError, Value};

use super::reader::Reader;
use crate::backend::redis::reply::{bytes_of, parse_entries, parse_groups};
use crate::backend::redis::stream_id::StreamId;
use crate::clock::now_ms;

impl Reader {
    /// Deletes, from the streams this member owns, the entries every group has acknowledged
    /// and that are older than the retention. Unacknowledged entries are never trimmed.
    pub(super) async fn trim(&mut self) -> Result<(), RedisError> {
        let keep = self.settings.keep_acknowledged.as_millis() as u64;
        let horizon = StreamId {
            ms: (now_ms().max(0) as u64).saturating_sub(keep),
            seq: 0,
        };
        let keep_entries = self.settings.keep_acknowledged_entries;
        for &p in &self.owned {
            let stream = &self.streams[p as usize];
            let groups: Value = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(stream)
                .query_async(&mut self.conn)
                .await?;
            let groups = parse_groups(&groups);
            if groups.is_empty() {
                continue;
            }
            // Everything before the oldest entry some group still needs is acknowledged.
            let mut needed = StreamId {
                ms: u64::MAX,
                seq: u64::MAX,
            };
            for group in groups {
                let oldest = if group.pending > 0 {
                    let summary: Value = redis::cmd("XPENDING")
                        .arg(stream)
                        .arg(&group.name)
                        .query_async(&mut self.conn)
                        .await?;
                    match &summary {
                        Value::Array(parts) => parts.get(1).and_then(bytes_of).and_then(StreamId::parse),
                        _ => None,
                    }
                    .unwrap_or(StreamId::ZERO)
                } else {
                    group.last_delivered.after()
                };
                needed = needed.min(oldest);
            }
            let mut trim_before = needed.min(horizon);
            if keep_entries > 0 && trim_before > StreamId::ZERO {
                // Keep the newest `keep_entries` acknowledged entries as well.
                let kept: Value = redis::cmd("XREVRANGE")
                    .arg(stream)
                    .arg(format!("({needed}"))
                    .arg("-")
                    .arg("COUNT")
                    .arg(keep_entries)
                    .query_async(&mut self.conn)
                    .await?;
                let kept = parse_entries(kept);
                trim_before = match kept.last() {
                    Some((oldest_kept, _)) if kept.len() as u64 == keep_entries => {
                        trim_before.min(*oldest_kept)
                    }
                    _ => StreamId::ZERO, // fewer than that: keep them all
                };
            }
            if trim_before > StreamId::ZERO {
                let _: u64 = redis::cmd("XTRIM")
                    .arg(stream)
                    .arg("MINID")
                    .arg(trim_before.to_string())
                    .query_async(&mut self.conn)
                    .await?;
            }
        }
        Ok(())
    }
}
