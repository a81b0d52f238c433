//! A Redis follower of a key-ordered handler's main member (`backend/follow.rs`): it never
//! joins its group's membership nor takes leases; it reads the partitions the main member
//! leases, told by that member's reader at each take, and gives one up, acknowledgements sent,
//! when told, before that member gives up the lease.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use super::reader::Reader;
use super::Item;
use crate::backend::follow::{Followers, Following};
use crate::backend::Fetched;

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

/// A follower's channel, its main member's words delivered to it and its reader woken (it may
/// be waiting for a partition to read).
pub(super) fn follow(followers: &Followers, wake: Arc<Notify>) -> mpsc::UnboundedReceiver<Following> {
    let (commands, receiver) = mpsc::unbounded_channel();
    followers.add(move |word| {
        let sent = commands.send(word).is_ok();
        wake.notify_one();
        sent
    });
    receiver
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
