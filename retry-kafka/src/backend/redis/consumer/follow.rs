//! A key-ordered handler's retry levels and held topic read, partition for partition, what its
//! main consumer leases (`Backend::subscribe_together`): the holds of a partition's keys live
//! in the process that consumes it on every level. A follower never joins its group's
//! membership nor takes leases; the main member's reader tells it which partitions to read
//! when it takes them, and, before it gives a lease up (a rebalance, an expired lease, its
//! leaving), waits until its followers have given those partitions up, their acknowledgements
//! sent: the next owner never reads a level's partition while this process still does (as
//! the Kafka backend's followers do, `backend/kafka/consumer/follow.rs`).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify};

use super::reader::Reader;
use super::Item;
use crate::backend::Fetched;

/// The longest a main member waits for its followers to give partitions up: each finishes
/// its current read first (at most the read's block, 500 ms by default) and sends its
/// acknowledgements.
const GIVE_UP_WAIT: Duration = Duration::from_secs(5);

/// What a follower's reader is told by its main member's.
pub(super) enum Following {
    /// Read these partitions, from the entries the group left pending on.
    Take(Vec<u32>),
    /// Give these up, acknowledgements sent; then say so.
    GiveUp(Vec<u32>, oneshot::Sender<()>),
}

/// How a consumer's reader comes by its partitions.
pub(super) enum Membership {
    /// Its share of the group's partitions, by leases (or all of them, unordered), telling
    /// its followers first when it has any.
    Joins(Option<Arc<Followers>>),
    /// What the main member of its key-ordered handler in this process leases; `None` once
    /// that member is gone.
    Follows(Option<mpsc::UnboundedReceiver<Following>>),
}

impl Membership {
    pub(super) fn follows(&self) -> bool {
        matches!(self, Membership::Follows(_))
    }

    /// The next word from the main member; never, for a member of its own.
    pub(super) async fn next(&mut self) -> Option<Following> {
        match self {
            Membership::Follows(Some(commands)) => commands.recv().await,
            _ => std::future::pending().await,
        }
    }

    /// A word from the main member, if one waits: `Some(None)` when the main member is gone.
    pub(super) fn try_next(&mut self) -> Option<Option<Following>> {
        match self {
            Membership::Follows(Some(commands)) => match commands.try_recv() {
                Ok(command) => Some(Some(command)),
                Err(mpsc::error::TryRecvError::Empty) => None,
                Err(mpsc::error::TryRecvError::Disconnected) => Some(None),
            },
            _ => None,
        }
    }
}

/// A follower as its main member reaches it: its command channel, and the wake-up of its
/// reader, which may be waiting for a partition to read.
struct Link {
    commands: mpsc::UnboundedSender<Following>,
    wake: Arc<Notify>,
}

impl Link {
    fn send(&self, command: Following) -> bool {
        let sent = self.commands.send(command).is_ok();
        self.wake.notify_one();
        sent
    }
}

/// The followers of one main consumer: their readers' command channels.
#[derive(Default)]
pub(crate) struct Followers {
    links: Mutex<Vec<Link>>,
}

impl Followers {
    /// A new follower's channel; `wake` wakes its reader.
    pub(super) fn add(&self, wake: Arc<Notify>) -> mpsc::UnboundedReceiver<Following> {
        let (commands, receiver) = mpsc::unbounded_channel();
        self.links().push(Link { commands, wake });
        receiver
    }

    fn links(&self) -> std::sync::MutexGuard<'_, Vec<Link>> {
        self.links.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The main member took `partitions`: so do its followers.
    pub(super) fn take(&self, partitions: &[u32]) {
        for link in self.links().iter() {
            // A follower already closed (shutdown) reads nothing more anyway.
            link.send(Following::Take(partitions.to_vec()));
        }
    }

    /// The main member gives `partitions` up: its followers do first, and this waits for
    /// them (at most [`GIVE_UP_WAIT`] in all).
    pub(super) async fn give_up(&self, topic: &str, partitions: &[u32]) {
        let replies: Vec<oneshot::Receiver<()>> = self
            .links()
            .iter()
            .filter_map(|link| {
                let (done, reply) = oneshot::channel();
                link.send(Following::GiveUp(partitions.to_vec(), done))
                    .then_some(reply)
            })
            .collect();
        // A follower closed meanwhile drops its sender: it reads nothing more either.
        let all = futures_util::future::join_all(replies);
        if tokio::time::timeout(GIVE_UP_WAIT, all).await.is_err() {
            tracing::warn!(
                topic,
                ?partitions,
                "a retry level did not give up its partitions in time; \
                 the next owner may run their retries while this process still does"
            );
        }
    }
}

impl Reader {
    /// A follower acts on its main member's word.
    pub(super) async fn follow(&mut self, command: Option<Following>) {
        match command {
            Some(Following::Take(partitions)) => {
                self.wanted.extend(partitions);
                self.take_wanted().await;
            }
            Some(Following::GiveUp(partitions, done)) => {
                for p in &partitions {
                    self.wanted.remove(p);
                }
                let owned: Vec<u32> = partitions.into_iter().filter(|p| self.owned.remove(p)).collect();
                if !owned.is_empty() {
                    self.drop_partitions(owned).await;
                }
                let _ = done.send(());
            }
            None => {
                // The main member is gone without a word (its reader failed): read nothing
                // more, as it does not.
                self.membership = Membership::Follows(None);
                self.wanted.clear();
                let owned: Vec<u32> = std::mem::take(&mut self.owned).into_iter().collect();
                if !owned.is_empty() {
                    self.drop_partitions(owned).await;
                }
            }
        }
    }

    /// A follower takes the partitions its main member holds and it does not read yet: the
    /// entries the group left pending there become its own, read again first. One that fails
    /// (the server is away) is taken at the next heartbeat.
    pub(super) async fn take_wanted(&mut self) {
        let missing: BTreeSet<u32> = self.wanted.difference(&self.owned).copied().collect();
        let mut taken = Vec::new();
        for p in missing {
            match self.take_over(p).await {
                Ok(()) => {
                    self.owned.insert(p);
                    taken.push(p);
                }
                Err(error) => {
                    tracing::warn!(topic = %self.topic, group = %self.group, partition = p, %error,
                        "could not take a partition its main member holds; trying again");
                }
            }
        }
        if !taken.is_empty() {
            // Retries of these partitions may be due before the ones known.
            self.next_due = None;
            tracing::debug!(topic = %self.topic, group = %self.group, member = %self.member, partitions = ?taken, "following: partitions taken");
            let _ = self.sender.try_send(Item::Event(Fetched::Assigned(taken)));
        }
    }
}
