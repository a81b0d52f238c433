//! The key-ordered steps of a level's loop (`ordering = "key"`): what starting a record means
//! ([`Begin`]: an attempt, held back behind its key, a dead-held record replayed or discarded,
//! an operator's resolution applied), a conclusion told to the key's holds, and the held
//! level's look past full partitions. Without key order every record is an attempt.

use tokio::time::Instant;

use super::attempt::Attempts;
use super::key_holds::Conclusion;
use super::key_order::{Begin, Concluding};
use super::LevelLoop;
use crate::backend::{Consumer, Record};

impl<C: Consumer, A: Attempts> LevelLoop<C, A> {
    /// What starting `record` means: an attempt, but on a key-ordered handler's levels (see
    /// [`Begin`]); a main-topic record found held back is counted as a follower here, so it
    /// must then be begun. `None`: it may not start yet.
    pub(super) fn begin_of(&self, record: &Record) -> Option<Begin> {
        match &self.order {
            Some(order) => order.begin(record),
            None => Some(Begin::Attempt),
        }
    }

    /// Starts `record` as `begin` says: attempted, held back behind its key, or (on the held
    /// topic, `on_dead_letter = "hold_key"`) replayed, discarded to its queue, or an operator's
    /// resolution applied.
    pub(super) async fn begin(
        &mut self,
        begin: Begin,
        mut record: Record,
        generation: u32,
        due: Option<i64>,
    ) {
        match begin {
            Begin::Attempt => self.start(record, generation, due).await,
            Begin::HoldBack(behind) => self.hold_back(record, generation, behind),
            Begin::Replay => {
                if let Some(order) = &mut self.order {
                    order.replaying(&record);
                }
                self.level.replaying(&mut record);
                self.start(record, generation, due).await
            }
            Begin::Discard(queue) => {
                self.partitions.started(record.partition, record.offset);
                if let Some(order) = &self.order {
                    order.discarding(&record);
                }
                let hand_off = self.level.discarded(record, queue, generation);
                self.hand_on(hand_off);
            }
            Begin::Resolve { of, how } => {
                let (partition, offset) = (record.partition, record.offset);
                self.partitions.started(partition, offset);
                if let Some(order) = &self.order {
                    order.resolve(partition, of, how);
                }
                self.finish(partition, offset).await;
            }
        }
    }

    /// Hands `record` to the held topic, unattempted: its key has a record out on a retry
    /// level, and it waits behind it.
    fn hold_back(&mut self, record: Record, generation: u32, behind: u64) {
        self.partitions.started(record.partition, record.offset);
        let hand_off = self.level.held_back(record, behind, generation);
        self.hand_on(hand_off);
    }

    /// The held level's partitions that are full while a record of theirs waits for an
    /// operator, and when to look past them for resolutions (see [`KeyOrder::resolution_look`]).
    pub(super) fn stuck_on_operators(&mut self) -> (Vec<u32>, Option<Instant>) {
        let Some(order) = self.order.as_mut().filter(|order| order.reads_held_topic()) else {
            return (Vec::new(), None);
        };
        let stuck = self
            .partitions
            .held_with(|record| order.waits_for_operator(record));
        let look = order.resolution_look(!stuck.is_empty());
        (stuck, look)
    }

    /// Tells the key's holds that one of its records concluded here (see [`KeyOrder`]).
    pub(super) fn key_concluded(&mut self, concluding: Option<Concluding>, conclusion: Conclusion) {
        if let (Some(order), Some(concluding)) = (&mut self.order, concluding) {
            order.concluded(concluding, conclusion);
        }
    }
}
