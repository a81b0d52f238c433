//! A key-ordered handler's retry levels and held topic read, partition for partition, what its
//! main consumer holds (`Backend::subscribe_together`): the holds of a partition's keys live in
//! the process that consumes it on every level. The followers never join a group of their
//! own; the main member tells them each partition it takes, and before it gives one up (a
//! rebalance, a lost lease, leaving) it waits until they gave it up, their settled work
//! acknowledged: the next owner never reads a level's partition while this one still does
//! (the way Kafka Streams moves a task's co-partitioned inputs together).
//!
//! The rule is written once, here, for every backend: each follower only says how a word
//! reaches it (a Kafka follower's poll thread, a Redis follower's reader), so a tiered pair's
//! retry store can follow its transport's main member.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// The longest a main member waits for its followers to give partitions up: each finishes
/// what it is doing (a Kafka follower drains for at most 300 ms and commits, a Redis follower
/// ends its read, 50 ms at most) and acknowledges.
const GIVE_UP_WAIT: Duration = Duration::from_secs(5);

/// What a follower is told by its main member.
#[derive(Debug)]
pub enum Following {
    /// Read these partitions, from where their group left them.
    Take(Vec<u32>),
    /// Give these up, settled work acknowledged; then say so.
    GiveUp(Vec<u32>, oneshot::Sender<()>),
}

/// How the main member reaches one follower: delivers a word, and says whether the follower is
/// still there.
type Link = Box<dyn Fn(Following) -> bool + Send + Sync>;

/// The followers of one main consumer, made by
/// [`Backend::subscribe_together`](super::Backend::subscribe_together) and shared by the
/// consumers it makes: each follower is added with its way of hearing a word; the main member
/// tells them what it takes and gives up.
///
/// ```
/// use retry_kafka::backend::follow::{Followers, Following};
///
/// let followers = Followers::default();
/// let (words, heard) = std::sync::mpsc::channel();
/// followers.add(move |word| words.send(word).is_ok());
/// followers.take(&[0, 2]);
/// assert!(matches!(heard.recv().unwrap(), Following::Take(p) if p == [0, 2]));
/// ```
#[derive(Default)]
pub struct Followers {
    links: Mutex<Vec<Link>>,
}

impl std::fmt::Debug for Followers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Followers")
            .field("links", &self.links().len())
            .finish()
    }
}

impl Followers {
    /// One more follower, reached through `link` (which returns `false` once the follower is
    /// gone: closed, it reads nothing more anyway).
    pub fn add(&self, link: impl Fn(Following) -> bool + Send + Sync + 'static) {
        self.links().push(Box::new(link));
    }

    fn links(&self) -> std::sync::MutexGuard<'_, Vec<Link>> {
        self.links.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The main member took `partitions`: so do its followers.
    pub fn take(&self, partitions: &[u32]) {
        for link in self.links().iter() {
            link(Following::Take(partitions.to_vec()));
        }
    }

    /// The main member gives `partitions` up: its followers do first. The main member waits
    /// for the answer ([`GivingUp::wait`], or [`GivingUp::wait_blocking`] on a thread of its
    /// own) before it lets the partitions go.
    pub fn give_up(&self, partitions: &[u32]) -> GivingUp {
        let replies = self
            .links()
            .iter()
            .filter_map(|link| {
                let (done, reply) = oneshot::channel();
                link(Following::GiveUp(partitions.to_vec(), done)).then_some(reply)
            })
            .collect();
        GivingUp {
            replies,
            partitions: partitions.to_vec(),
        }
    }
}

/// The followers' answers to a [`Followers::give_up`].
#[must_use = "the partitions may go only once the followers gave them up"]
pub struct GivingUp {
    replies: Vec<oneshot::Receiver<()>>,
    partitions: Vec<u32>,
}

impl GivingUp {
    /// Until every follower gave the partitions up (one closed meanwhile drops its answer:
    /// it reads nothing more either), 5 s at most.
    pub async fn wait(self, topic: &str) {
        let all = futures_util::future::join_all(self.replies);
        if tokio::time::timeout(GIVE_UP_WAIT, all).await.is_err() {
            warn_late(topic, &self.partitions);
        }
    }

    /// [`wait`](Self::wait), on a thread that is not the runtime's (a Kafka consumer's poll
    /// thread, in its rebalance callback).
    pub fn wait_blocking(mut self, topic: &str) {
        let deadline = Instant::now() + GIVE_UP_WAIT;
        while !self.replies.is_empty() {
            self.replies
                .retain_mut(|reply| matches!(reply.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
            if self.replies.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                warn_late(topic, &self.partitions);
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn warn_late(topic: &str, partitions: &[u32]) {
    tracing::warn!(
        topic,
        ?partitions,
        "a retry level did not give up its partitions in time; \
         the next owner may run their retries while this process still does"
    );
}
