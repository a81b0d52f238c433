//! A key-ordered handler's retry levels and held topic read, partition for partition, what its
//! main consumer is assigned (`Backend::subscribe_together`): the holds of a partition's keys
//! live in the process that consumes it on every level. The followers never join a group
//! (their offsets are committed under their own group ids, as a level's always were); the main
//! member's rebalance callbacks assign them, and on a revoke wait until they have given the
//! partitions up, their settled work committed, before giving up its own: the next owner
//! never runs a level's partition while this one still does (the way Kafka Streams moves a
//! task's co-partitioned inputs together).

use std::sync::mpsc as std_mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Command;

/// The longest a main member's revoke waits for its followers: each drains for at most 300 ms
/// (`settle.rs`) and commits.
const REVOKE_WAIT: Duration = Duration::from_secs(5);

/// What a follower's poll thread is told by its leader.
pub(super) enum Following {
    /// Read these partitions from their committed offsets.
    Assign(Vec<u32>),
    /// Give these up, settled work committed; then say so.
    Revoke(Vec<u32>, std_mpsc::Sender<()>),
}

/// The followers of one main consumer: the command channels of their poll threads.
#[derive(Default)]
pub(crate) struct Followers {
    links: Mutex<Vec<std_mpsc::Sender<Command>>>,
}

impl Followers {
    pub(super) fn add(&self, commands: std_mpsc::Sender<Command>) {
        self.links().push(commands);
    }

    fn links(&self) -> std::sync::MutexGuard<'_, Vec<std_mpsc::Sender<Command>>> {
        self.links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The main member was assigned `partitions`: so are its followers.
    pub(super) fn assign(&self, partitions: &[u32]) {
        for link in self.links().iter() {
            // A follower already closed (shutdown) reads nothing more anyway.
            let _ = link.send(Command::Follow(Following::Assign(partitions.to_vec())));
        }
    }

    /// The main member loses `partitions`: its followers give them up first, and this waits
    /// for them (at most [`REVOKE_WAIT`] in all). Runs on the main member's poll thread, inside
    /// its rebalance callback.
    pub(super) fn revoke(&self, topic: &str, partitions: &[u32]) {
        let (done, replies) = std_mpsc::channel();
        let mut waiting = 0;
        for link in self.links().iter() {
            let command = Command::Follow(Following::Revoke(partitions.to_vec(), done.clone()));
            waiting += usize::from(link.send(command).is_ok());
        }
        drop(done);
        let deadline = Instant::now() + REVOKE_WAIT;
        for _ in 0..waiting {
            let left = deadline.saturating_duration_since(Instant::now());
            match replies.recv_timeout(left) {
                Ok(()) => {}
                // Closed meanwhile: it gives nothing up any more.
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    tracing::warn!(
                        topic,
                        ?partitions,
                        "a retry level did not give up its partitions in time; \
                        the next owner may run their retries while this process still does"
                    );
                    break;
                }
            }
        }
    }
}
