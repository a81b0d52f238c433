//! A Redis consumer: one member of a consumer group over a topic's partition streams.
//!
//! Partitions are owned through leases, so each partition stream has one reader at a time and
//! order per key holds. A reader task owns the blocking connection: it renews membership and
//! leases, takes over partitions (claiming what a silent member left pending), moves due
//! retries out of the delay set, flushes acknowledgements, trims what every group acknowledged,
//! and reads entries into a channel. [`RedisConsumer::next`] only receives from that channel,
//! so dropping it loses nothing.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::RedisError;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::error::transport;
use super::hand_offs::HandOffWriter;
use super::link::Link;
use super::stream_id::StreamId;
use super::{Redis, Source};
use crate::backend::follow::Followers;
use crate::backend::{
    Consumer, Fetched, HandOffId, HandOffReports, OutboundRecord, Position, Record, Subscription, Topic,
    TopicRole,
};
use crate::error::BackendError;
use follow::Membership;
use reader::Reader;

mod follow;
mod membership;
mod pacing;
mod reader;
mod trim;

/// The longest an acknowledgement waits for company while the reader has nothing to read.
const ACK_DELAY: Duration = Duration::from_millis(5);

/// What the reader hands the consumer.
enum Item {
    Record {
        epoch: u64,
        id: StreamId,
        record: Record,
    },
    Event(Fetched),
}

/// State the consumer and its reader share.
#[derive(Default)]
struct Control {
    /// Bumped when a partition is held, resumed or revoked: entries read before are stale.
    epochs: Vec<u64>,
    paused: Vec<bool>,
    /// Re-read this member's pending entries after this ID before reading new ones.
    replay_after: Vec<Option<StreamId>>,
    /// Acknowledged entries not yet sent to the server, per partition.
    acks: Vec<Vec<StreamId>>,
}

/// Acknowledgements to send: (partition, IDs).
type Acks = Vec<(usize, Vec<StreamId>)>;

impl Control {
    fn take_acks(&mut self) -> Acks {
        self.acks
            .iter_mut()
            .enumerate()
            .filter(|(_, a)| !a.is_empty())
            .map(|(p, a)| (p, std::mem::take(a)))
            .collect()
    }

    /// Puts back acknowledgements that could not be sent, to go with the next attempt.
    fn restore_acks(&mut self, acks: Acks) {
        for (p, ids) in acks {
            self.acks[p].extend(ids);
        }
    }
}

/// How a consumer joins its group.
pub(super) enum Joining {
    /// A member with its own share of the partitions.
    Member,
    /// A member whose followers read what it leases.
    Leads(Arc<Followers>),
    /// No member: reads what the main member of these followers leases.
    Follows(Arc<Followers>),
}

/// One member of a Redis consumer group, reading one topic. See [`Redis`].
///
/// The runtime drives consumers; reading a topic by hand looks like this:
///
/// ```no_run
/// use retry_kafka::backend::{Backend, Consumer, Fetched, Subscription, Topic};
/// use retry_kafka::backend::redis::Redis;
///
/// # async fn audit() -> Result<(), retry_kafka::error::BackendError> {
/// let redis = Redis::builder("redis://127.0.0.1:6379").build().expect("valid URL");
/// let subscription = Subscription { topic: Topic::main("orders"), group: "audit".into() };
/// let mut consumer = redis.subscribe(subscription).await?;
/// if let Fetched::Record(record) = consumer.next().await? {
///     println!("{:?}", record.payload);
///     consumer.ack(record.partition, record.offset).await?;
/// }
/// consumer.close().await // sends the acknowledgement, gives up the partitions
/// # }
/// ```
pub struct RedisConsumer {
    topic: String,
    group: String,
    streams: Vec<String>,
    items: mpsc::Receiver<Item>,
    control: Arc<Mutex<Control>>,
    wake: Arc<Notify>,
    /// Tells the reader there are acknowledgements to send.
    acked: Arc<Notify>,
    stop: CancellationToken,
    reader: Option<JoinHandle<Result<(), BackendError>>>,
    /// Entries delivered and not acknowledged, per partition, in offset order.
    delivered: HashMap<u32, VecDeque<(u64, StreamId)>>,
    /// Picks each hand-off's partition, builds its write and sends it, many per round trip.
    writer: Option<HandOffWriter>,
}

impl RedisConsumer {
    /// A consumer of `subscription`, joining as `joining` says.
    pub(super) async fn start(
        redis: Redis,
        subscription: Subscription,
        partitions: u32,
        joining: Joining,
    ) -> Result<Self, BackendError> {
        let Subscription { topic, group } = subscription;
        let (topic, role) = (topic.name.to_string(), topic.role);
        let keys = redis.keys();
        let streams: Vec<String> = (0..partitions).map(|p| keys.stream(&topic, p)).collect();
        let mut conn = redis.connection();
        for stream in &streams {
            create_group(&mut conn, stream, &group).await?;
        }
        let n = partitions as usize;
        let control = Arc::new(Mutex::new(Control {
            epochs: vec![0; n],
            paused: vec![false; n],
            replay_after: vec![None; n],
            acks: vec![Vec::new(); n],
        }));
        let settings = redis.settings().clone();
        let (sender, items) = mpsc::channel(settings.batch * 2);
        let wake = Arc::new(Notify::new());
        let acked = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        let reader = Reader {
            member: redis.member_name(),
            delayed: match role {
                TopicRole::Retry { .. } => keys.delay_sets(&topic, partitions),
                _ => Vec::new(),
            },
            members: keys.members(&topic, &group),
            leases: (0..partitions).map(|p| keys.lease(&topic, &group, p)).collect(),
            blocking: redis.blocking_connection().await?,
            conn,
            topic: topic.clone(),
            group: group.clone(),
            streams: streams.clone(),
            settings,
            sender,
            control: control.clone(),
            wake: wake.clone(),
            acked: acked.clone(),
            stop: stop.clone(),
            owned: BTreeSet::new(),
            membership: match joining {
                Joining::Member => Membership::Joins(None),
                Joining::Leads(followers) => Membership::Joins(Some(followers)),
                Joining::Follows(followers) => {
                    Membership::Follows(Some(follow::follow(&followers, wake.clone())))
                }
            },
            wanted: BTreeSet::new(),
            lease_until: Instant::now(),
            next_due: None,
            sweep: false,
            sent_up_to: vec![None; n],
            behind: false,
        };
        tracing::debug!(%topic, %group, member = %reader.member, "redis consumer joining");
        let writer = HandOffWriter::start(&redis)?;
        let reader = tokio::spawn(reader.run());
        Ok(RedisConsumer {
            topic,
            group,
            streams,
            items,
            control,
            wake,
            acked,
            stop,
            reader: Some(reader),
            delivered: HashMap::new(),
            writer: Some(writer),
        })
    }

    /// The stream entry a hand-off of (`partition`, `offset`) acknowledges.
    pub(super) fn source_of(&self, partition: u32, offset: u64) -> Option<Source> {
        let delivered = self.delivered.get(&partition)?;
        let index = delivered.binary_search_by_key(&offset, |&(o, _)| o).ok()?;
        Some(Source {
            stream: self.streams[partition as usize].clone(),
            group: self.group.clone(),
            id: delivered[index].1,
        })
    }

    fn control(&self) -> std::sync::MutexGuard<'_, Control> {
        self.control.lock().unwrap()
    }
}

impl Consumer for RedisConsumer {
    async fn next(&mut self) -> Result<Fetched, BackendError> {
        loop {
            match self.items.recv().await {
                Some(Item::Record { epoch, id, record }) => {
                    let p = record.partition as usize;
                    {
                        let control = self.control();
                        if control.epochs[p] != epoch || control.paused[p] {
                            continue;
                        }
                    }
                    // Kept in offset order: entries arrive in order, except re-reads (after a
                    // take-over) and entries claimed from another member (unordered).
                    let delivered = self.delivered.entry(record.partition).or_default();
                    match delivered.back() {
                        Some(&(last, _)) if last >= record.offset => {
                            let at = delivered.partition_point(|&(o, _)| o < record.offset);
                            if delivered.get(at).is_none_or(|&(o, _)| o != record.offset) {
                                delivered.insert(at, (record.offset, id));
                            }
                        }
                        _ => delivered.push_back((record.offset, id)),
                    }
                    return Ok(Fetched::Record(record));
                }
                Some(Item::Event(event)) => {
                    if let Fetched::Revoked(partitions) = &event {
                        for p in partitions {
                            self.delivered.remove(p);
                        }
                    }
                    return Ok(event);
                }
                None => {
                    return Err(BackendError::ConsumerStopped {
                        topic: self.topic.clone(),
                        source: "the reader task ended".into(),
                    })
                }
            }
        }
    }

    /// One MULTI/EXEC per call: it writes the next hop (ZADD into the level's delay set, or
    /// XADD to the dead-letter stream) and XACKs the source in one step. The consumer's
    /// hand-off writer sends those queued during one round trip together in the next. On a
    /// cluster the write (once per source) and the XACK go in two rounds (`hand_offs.rs`).
    fn hand_off(&mut self, id: HandOffId, from: Position, to: Topic, record: OutboundRecord) {
        let source = self.source_of(from.partition, from.offset);
        let writer = self.writer.as_ref().expect("open until closed");
        writer.hand_off(id, to, record, source);
    }

    fn hand_off_reports(&self) -> &HandOffReports {
        self.writer.as_ref().expect("open until closed").reports()
    }

    fn hold(&mut self, partition: u32, offset: u64) {
        let p = partition as usize;
        // Entries from `offset` on are read again after the resume: from the first delivered
        // one at or after it, or, when the runtime kept everything delivered (it holds after
        // the records it keeps), from the one after the last delivered.
        let held = self.delivered.get_mut(&partition).and_then(|delivered| {
            let start = delivered.partition_point(|&(o, _)| o < offset);
            let after = match delivered.get(start) {
                Some(&(_, id)) => Some(id.before()),
                None => start.checked_sub(1).map(|last| delivered[last].1),
            };
            delivered.truncate(start);
            after
        });
        let mut control = self.control();
        if p < control.epochs.len() {
            control.epochs[p] += 1;
            control.paused[p] = true;
            // Entries from the held one on are re-read from this member's pending list (all
            // of it if the held entry is unknown, which only a misuse can cause).
            control.replay_after[p] = Some(held.unwrap_or(StreamId::ZERO));
        }
    }

    fn resume(&mut self, partition: u32) {
        let p = partition as usize;
        let mut control = self.control();
        if p < control.epochs.len() {
            control.epochs[p] += 1;
            control.paused[p] = false;
        }
        drop(control);
        self.wake.notify_one();
    }

    /// Records the acknowledgement; the reader sends it (XACK) with its next read or, while it
    /// waits for room, at once; acknowledgements that pile up meanwhile go in one round trip.
    /// [`close`](Consumer::close) sends what is left.
    async fn ack(&mut self, partition: u32, offset: u64) -> Result<(), BackendError> {
        let Some(delivered) = self.delivered.get_mut(&partition) else {
            return Ok(());
        };
        let upto = delivered.partition_point(|&(o, _)| o <= offset);
        tracing::trace!(topic = %self.topic, partition, offset, entries = upto, "acknowledged");
        if upto == 0 {
            return Ok(());
        }
        let mut control = self.control.lock().unwrap();
        if let Some(acks) = control.acks.get_mut(partition as usize) {
            acks.extend(delivered.drain(..upto).map(|(_, id)| id));
        }
        drop(control);
        self.acked.notify_one();
        Ok(())
    }

    async fn close(mut self) -> Result<(), BackendError> {
        if let Some(writer) = self.writer.take() {
            writer.close().await;
        }
        self.stop.cancel();
        self.wake.notify_one();
        let reader = self.reader.take().expect("closed once");
        match reader.await {
            Ok(result) => result,
            Err(error) => Err(BackendError::ConsumerStopped {
                topic: self.topic.clone(),
                source: Box::new(error),
            }),
        }
    }
}

impl Drop for RedisConsumer {
    fn drop(&mut self) {
        // Not closed: stop the reader; its leases expire and its pending entries are claimed.
        if let Some(reader) = self.reader.take() {
            self.stop.cancel();
            reader.abort();
        }
    }
}

async fn create_group(conn: &mut Link, stream: &str, group: &str) -> Result<(), BackendError> {
    let created: Result<(), RedisError> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Err(error) if error.code() != Some("BUSYGROUP") => Err(transport(error)),
        _ => Ok(()),
    }
}
