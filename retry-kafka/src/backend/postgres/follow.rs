//! A PostgreSQL worker that follows a key-ordered handler's main member (`backend/follow.rs`):
//! instead of sharing every partition's due rows with the level's other workers, it claims
//! only the rows of the partitions that member holds. Its keeper task hears the member's words:
//! a take adds partitions; a give-up stops claims there, waits (300 ms at most) for the rows
//! delivered from them to be acknowledged, marks those handled, waits for a claim under way to
//! end and gives back every row of theirs this worker still holds, then answers, so the next
//! owner's worker finds them free and in order.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, Notify, RwLock};
use tokio::time::Instant;

use crate::backend::follow::{Followers, Following};
use crate::backend::Fetched;

/// How long a give-up waits for the rows delivered from its partitions to be acknowledged
/// (as a Kafka follower drains before its revoke).
const DRAIN: Duration = Duration::from_millis(300);

#[derive(Default)]
struct State {
    owned: BTreeSet<u32>,
    /// Assignments and revocations for the runtime, in order.
    events: VecDeque<Fetched>,
    /// Rows delivered and not acknowledged, per partition.
    in_flight: HashMap<u32, usize>,
}

/// A following worker's partitions, shared by the worker and its keeper.
#[derive(Default)]
pub(super) struct Followed {
    state: Mutex<State>,
    /// Held for reading by each claim under way: a give-up takes it for writing before it gives
    /// rows back, so no claim made before the give-up keeps a row of its partitions.
    pub(super) claims: Arc<RwLock<()>>,
    /// Woken when the partitions change.
    pub(super) changed: Notify,
    /// Woken when a partition's delivered rows are all acknowledged, for a give-up's drain.
    emptied: Notify,
}

impl Followed {
    /// A follower of `followers`: its keeper receives their main member's words.
    pub(super) fn join(followers: &Followers) -> (Arc<Self>, mpsc::UnboundedReceiver<Following>) {
        let (words, heard) = mpsc::unbounded_channel();
        followers.add(move |word| words.send(word).is_ok());
        (Arc::new(Followed::default()), heard)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next assignment or revocation for the runtime.
    pub(super) fn next_event(&self) -> Option<Fetched> {
        self.state().events.pop_front()
    }

    pub(super) fn owns(&self, partition: u32) -> bool {
        self.state().owned.contains(&partition)
    }

    /// The partitions of `0..count` this worker does not hold: its claims leave them out.
    pub(super) fn not_owned(&self, count: u32) -> Vec<i32> {
        let state = self.state();
        (0..count)
            .filter(|p| !state.owned.contains(p))
            .map(|p| p as i32)
            .collect()
    }

    pub(super) fn owned(&self) -> Vec<u32> {
        self.state().owned.iter().copied().collect()
    }

    pub(super) fn owns_none(&self) -> bool {
        self.state().owned.is_empty()
    }

    pub(super) fn delivered(&self, partition: u32) {
        *self.state().in_flight.entry(partition).or_default() += 1;
    }

    pub(super) fn acknowledged(&self, partition: u32, rows: usize) {
        let emptied = match self.state().in_flight.get_mut(&partition) {
            Some(count) if *count > 0 => {
                *count = count.saturating_sub(rows);
                *count == 0
            }
            _ => false,
        };
        if emptied {
            self.emptied.notify_waiters();
        }
    }

    pub(super) fn take(&self, partitions: Vec<u32>) {
        let mut state = self.state();
        let taken: Vec<u32> = partitions
            .into_iter()
            .filter(|&p| state.owned.insert(p))
            .collect();
        if !taken.is_empty() {
            state.events.push_back(Fetched::Assigned(taken));
        }
        drop(state);
        self.changed.notify_one();
    }

    /// Stops claims in `partitions`; the ones it held.
    pub(super) fn give_up(&self, partitions: &[u32]) -> Vec<u32> {
        let mut state = self.state();
        let given: Vec<u32> = partitions
            .iter()
            .copied()
            .filter(|p| state.owned.remove(p))
            .collect();
        if !given.is_empty() {
            state.events.push_back(Fetched::Revoked(given.clone()));
        }
        drop(state);
        self.changed.notify_one();
        given
    }

    /// Until the rows delivered from `partitions` are acknowledged, [`DRAIN`] at most.
    pub(super) async fn drained(&self, partitions: &[u32]) {
        let deadline = Instant::now() + DRAIN;
        loop {
            // Listening before looking: an acknowledgement between the two still wakes it.
            let emptied = self.emptied.notified();
            tokio::pin!(emptied);
            emptied.as_mut().enable();
            let busy = {
                let state = self.state();
                partitions
                    .iter()
                    .any(|p| state.in_flight.get(p).is_some_and(|&n| n > 0))
            };
            if !busy || tokio::time::timeout_at(deadline, emptied).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::time::Instant;

    use super::{Followed, DRAIN};

    #[tokio::test(start_paused = true)]
    async fn a_give_up_drains_until_the_last_acknowledgement_and_no_longer_than_its_bound() {
        let followed = Arc::new(Followed::default());
        let started = Instant::now();
        followed.drained(&[0]).await;
        assert_eq!(started.elapsed(), Duration::ZERO, "nothing in flight: at once");
        followed.delivered(0);
        followed.delivered(0);
        followed.delivered(1);
        let acks = {
            let followed = followed.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(40)).await;
                followed.acknowledged(0, 1);
                tokio::time::sleep(Duration::from_millis(30)).await;
                followed.acknowledged(0, 1);
            })
        };
        let started = Instant::now();
        followed.drained(&[0]).await;
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(70),
            "woken by the last acknowledgement of partition 0, not by a poll"
        );
        acks.await.unwrap();
        let started = Instant::now();
        followed.drained(&[1]).await;
        assert_eq!(started.elapsed(), DRAIN, "partition 1 never drains: the bound");
    }
}
