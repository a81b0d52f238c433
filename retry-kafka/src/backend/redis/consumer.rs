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

use redis::aio::ConnectionManager;
use redis::{RedisError, Value};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    bytes_of, decode, into_bytes, keys, parse_entries, parse_groups, scripts, transport, Redis, Source,
    StreamId,
};
use crate::backend::{Consumer, Fetched, HandOff, OutboundRecord, Record, Subscription};
use crate::error::BackendError;
use crate::policy::now_ms;
use crate::runtime::sleep_until_opt;

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

/// One member of a Redis consumer group, reading one topic. See [`Redis`].
///
/// The runtime drives consumers; reading a topic by hand looks like this:
///
/// ```no_run
/// use retry_kafka::backend::{Backend, Consumer, Fetched, Subscription};
/// use retry_kafka::backend::redis::Redis;
///
/// # async fn audit() -> Result<(), retry_kafka::error::BackendError> {
/// let redis = Redis::builder("redis://127.0.0.1:6379").build().expect("valid URL");
/// let subscription = Subscription { topic: "orders".into(), group: "audit".into() };
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
    /// Writes hand-offs.
    redis: Redis,
}

impl RedisConsumer {
    pub(super) async fn start(
        redis: Redis,
        subscription: Subscription,
        partitions: u32,
    ) -> Result<Self, BackendError> {
        let Subscription { topic, group } = subscription;
        let streams: Vec<String> = (0..partitions).map(|p| keys::stream(&topic, p)).collect();
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
            delayed: redis.is_delayed(&topic).then(|| keys::delayed(&topic)),
            members: keys::members(&topic, &group),
            leases: (0..partitions).map(|p| keys::lease(&topic, &group, p)).collect(),
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
            lease_until: Instant::now(),
            next_due: None,
            sweep: false,
        };
        tracing::debug!(%topic, %group, member = %reader.member, "redis consumer joining");
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
            redis,
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
    /// XADD to the dead-letter stream) and XACKs the source in one step. Many run at once on
    /// the shared multiplexed connection, pipelined. (The record is cloned into the future:
    /// measured as part of the ~32 CPU-µs a Redis hand-off costs this process.)
    fn hand_off(&mut self, partition: u32, offset: u64, topic: &str, record: &OutboundRecord) -> HandOff {
        let source = self.source_of(partition, offset);
        let redis = self.redis.clone();
        let topic = topic.to_owned();
        let record = record.clone();
        Box::pin(async move {
            let target = redis.pick_partition(&topic, &record).await?;
            redis.write(&topic, target, &record, source).await
        })
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

async fn create_group(conn: &mut ConnectionManager, stream: &str, group: &str) -> Result<(), BackendError> {
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

/// The task behind a [`RedisConsumer`].
struct Reader {
    topic: String,
    group: String,
    member: String,
    streams: Vec<String>,
    /// The delay set to move due entries from, on a retry level.
    delayed: Option<String>,
    members: String,
    leases: Vec<String>,
    conn: ConnectionManager,
    blocking: ConnectionManager,
    settings: super::Settings,
    sender: mpsc::Sender<Item>,
    control: Arc<Mutex<Control>>,
    wake: Arc<Notify>,
    acked: Arc<Notify>,
    stop: CancellationToken,
    owned: BTreeSet<u32>,
    /// Until when the leases of `owned` are known to hold.
    lease_until: Instant,
    /// When the next entry in the delay set is due (epoch ms), if known.
    next_due: Option<i64>,
    /// Unordered: claim what other members left pending, in the next round.
    sweep: bool,
}

impl Reader {
    async fn run(mut self) -> Result<(), BackendError> {
        let heartbeat = self.settings.session_timeout / 3;
        let mut next_heartbeat = Instant::now();
        let mut next_trim = Instant::now() + self.settings.trim_interval;
        let mut failures = 0u32;
        // A handle of its own, so waiting for room does not borrow `self`.
        let sender = self.sender.clone();
        let mut ack_due: Option<Instant> = None;
        while !self.stop.is_cancelled() {
            if Instant::now() >= next_heartbeat {
                let renewed = if self.settings.unordered {
                    self.renew_unordered().await
                } else {
                    self.rebalance().await
                };
                match renewed {
                    Ok(()) => next_heartbeat = Instant::now() + heartbeat,
                    Err(error) => {
                        tracing::warn!(topic = %self.topic, group = %self.group, %error, "redis membership renewal failed; retrying");
                        next_heartbeat = Instant::now() + heartbeat.min(Duration::from_millis(500));
                    }
                }
                if !self.settings.unordered && Instant::now() >= self.lease_until && !self.owned.is_empty() {
                    // Leases not renewed in time may belong to another member by now.
                    let lost: Vec<u32> = std::mem::take(&mut self.owned).into_iter().collect();
                    tracing::warn!(topic = %self.topic, group = %self.group, partitions = ?lost, "leases expired; partitions given up");
                    self.revoke(lost).await;
                }
            }
            if Instant::now() >= next_trim {
                if let Err(error) = self.trim().await {
                    tracing::debug!(topic = %self.topic, %error, "trim failed");
                }
                next_trim = Instant::now() + self.settings.trim_interval;
            }
            let result = tokio::select! {
                _ = self.stop.cancelled() => break,
                permits = sender.reserve_many(self.settings.batch) => match permits {
                    Ok(permits) => self.read(permits, next_heartbeat).await,
                    Err(_) => break, // the consumer is gone
                },
                // Acknowledgements made while the reader waits go out within ACK_DELAY, in one
                // round trip however many there are (a read sends them sooner).
                _ = self.acked.notified(), if ack_due.is_none() => {
                    ack_due = Some(Instant::now() + ACK_DELAY);
                    Ok(())
                }
                _ = sleep_until_opt(ack_due), if ack_due.is_some() => {
                    ack_due = None;
                    self.flush_acks().await
                }
                _ = tokio::time::sleep_until(next_heartbeat) => Ok(()),
            };
            match result {
                Ok(()) => failures = 0,
                Err(error) => {
                    failures += 1;
                    if is_missing_group(&error) {
                        // The server lost the group (restart without persistence, or the
                        // stream was deleted): create it again and go on.
                        tracing::warn!(topic = %self.topic, group = %self.group, "consumer group missing; creating it again");
                        for stream in self.streams.clone() {
                            let _ = create_group(&mut self.conn, &stream, &self.group).await;
                        }
                        continue;
                    }
                    let pause = Duration::from_millis(100 * u64::from(failures.min(20)));
                    tracing::warn!(topic = %self.topic, group = %self.group, %error, retry_in = ?pause, "redis read failed; retrying");
                    tokio::select! {
                        _ = self.stop.cancelled() => break,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
        self.leave().await
    }

    /// One round trip: send pending acknowledgements, move due retries, and read.
    async fn read(
        &mut self,
        permits: mpsc::PermitIterator<'_, Item>,
        next_heartbeat: Instant,
    ) -> Result<(), RedisError> {
        // A retry level that knows when its next entry is due waits for it here, on a precise
        // timer, rather than in the server: a blocked read's timeout is only noticed on the
        // server's next tick (100 ms at the default `hz`), which made retries up to ~100 ms
        // late. Nothing has been taken yet, so being cancelled meanwhile loses nothing.
        let mut waited_for_due = false;
        if let (Some(_), Some(due)) = (&self.delayed, self.next_due) {
            let wait = due - now_ms();
            if wait > 0 {
                let until_heartbeat = next_heartbeat.saturating_duration_since(Instant::now());
                let wait = Duration::from_millis(wait as u64)
                    .min(self.settings.block)
                    .min(until_heartbeat);
                tokio::time::sleep(wait).await;
                waited_for_due = true;
            }
        }
        let (acks, epochs, replay, live) = {
            let mut control = self.control.lock().unwrap();
            let acks = control.take_acks();
            let readable = |p: &&u32| !control.paused[**p as usize];
            let replay: Vec<(u32, StreamId)> = self
                .owned
                .iter()
                .filter(readable)
                .filter_map(|&p| control.replay_after[p as usize].map(|id| (p, id)))
                .collect();
            let live: Vec<u32> = self
                .owned
                .iter()
                .filter(readable)
                .filter(|&&p| control.replay_after[p as usize].is_none())
                .copied()
                .collect();
            (acks, control.epochs.clone(), replay, live)
        };
        let replaying = !replay.is_empty();
        if !replaying && live.is_empty() {
            // Nothing owned, or everything held: send what was acknowledged, then wait for a
            // change rather than spin.
            if !acks.is_empty() {
                let sent: Result<(), RedisError> = self.acking(&acks).query_async(&mut self.conn).await;
                if let Err(error) = sent {
                    self.control.lock().unwrap().restore_acks(acks);
                    return Err(error);
                }
            }
            let pause = next_heartbeat
                .saturating_duration_since(Instant::now())
                .min(self.settings.block);
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
            }
            return Ok(());
        }
        let mut pipe = self.acking(&acks);
        if self.sweep && !replaying {
            self.sweep = false;
            return self.claim_idle(pipe, acks, permits, &live, &epochs).await;
        }
        let now = now_ms();
        // Only a member that reads moves due retries, in the same round trip as its read.
        let moving = self.delayed.is_some() && self.next_due.is_none_or(|due| due <= now);
        if let (Some(delayed), true) = (&self.delayed, moving) {
            pipe.cmd("EVAL")
                .arg(scripts::MOVE_DUE)
                .arg(1)
                .arg(delayed)
                .arg(now)
                .arg(1000);
        }
        let streams: Vec<(u32, String)> = if replaying {
            // History reads do not block: read the pending entries first.
            replay.iter().map(|&(p, after)| (p, after.to_string())).collect()
        } else {
            live.iter().map(|&p| (p, ">".to_owned())).collect()
        };
        let block = if replaying {
            None
        } else {
            let until_heartbeat = next_heartbeat.saturating_duration_since(Instant::now());
            let mut block = self.settings.block.min(until_heartbeat);
            if waited_for_due {
                // Waited already: only read what is there (and what the move just added).
                block = Duration::from_millis(1);
            } else if self.delayed.is_some() {
                let until_due = match self.next_due {
                    Some(due) => Duration::from_millis(due.saturating_sub(now).max(0) as u64),
                    None => self.settings.due_poll,
                };
                block = block.min(until_due.min(self.settings.due_poll.max(Duration::from_millis(1))));
            }
            Some(block.max(Duration::from_millis(1)))
        };
        let per_stream = (self.settings.batch / streams.len()).max(1);
        let read = pipe.cmd("XREADGROUP");
        read.arg("GROUP")
            .arg(&self.group)
            .arg(&self.member)
            .arg("COUNT")
            .arg(per_stream);
        if let Some(block) = block {
            read.arg("BLOCK").arg(block.as_millis() as u64);
        }
        read.arg("STREAMS");
        for (p, _) in &streams {
            read.arg(&self.streams[*p as usize]);
        }
        for (_, id) in &streams {
            read.arg(id);
        }
        let replies: Vec<Value> = match pipe.query_async(&mut self.blocking).await {
            Ok(replies) => replies,
            Err(error) => {
                // Unsent acknowledgements go back, to be sent with the next read.
                self.control.lock().unwrap().restore_acks(acks);
                return Err(error);
            }
        };
        let mut replies = replies.into_iter();
        if moving {
            if let Some(Value::Array(moved)) = replies.next() {
                self.next_due = match moved.get(1) {
                    Some(Value::Int(due)) if *due >= 0 => Some(*due),
                    _ => None,
                };
            }
        }
        let Some(reply) = replies.next() else {
            return Ok(());
        };
        let mut permits = permits;
        let mut read_any = vec![false; self.streams.len()];
        for (key, entries) in stream_replies(reply) {
            let Some(p) = self.streams.iter().position(|s| s.as_bytes() == key) else {
                continue;
            };
            let mut last = None;
            let mut unsent = None;
            for (id, fields) in parse_entries(entries) {
                if fields.is_empty() {
                    // Deleted while pending: nothing to deliver, only to acknowledge.
                    self.control.lock().unwrap().acks[p].push(id);
                    last = Some(id);
                    continue;
                }
                let Some(permit) = permits.next() else {
                    // No room (cannot happen with COUNT sized to the permits): the rest is in
                    // this member's pending list; read it from there.
                    unsent = Some(id);
                    break;
                };
                permit.send(Item::Record {
                    epoch: epochs[p],
                    id,
                    record: decode(p as u32, id, fields),
                });
                last = Some(id);
            }
            read_any[p] = last.is_some() || unsent.is_some();
            let mut control = self.control.lock().unwrap();
            if control.epochs[p] == epochs[p] {
                if let Some(first) = unsent {
                    control.replay_after[p] = Some(first.before());
                } else if replaying {
                    control.replay_after[p] = last;
                }
            }
        }
        if replaying {
            // A partition whose history read came back empty is caught up.
            let mut control = self.control.lock().unwrap();
            for (p, _) in &replay {
                if !read_any[*p as usize] && control.epochs[*p as usize] == epochs[*p as usize] {
                    control.replay_after[*p as usize] = None;
                }
            }
        }
        Ok(())
    }

    /// Renews membership, computes this member's share of the partitions, gives up what is no
    /// longer its share, and takes what is (once the previous owner's lease is gone).
    async fn rebalance(&mut self) -> Result<(), RedisError> {
        let ttl = self.settings.session_timeout;
        let started = Instant::now();
        let now = now_ms();
        let (_, _, members): ((), (), Vec<String>) = redis::pipe()
            .cmd("ZADD")
            .arg(&self.members)
            .arg(now + ttl.as_millis() as i64)
            .arg(&self.member)
            .cmd("ZREMRANGEBYSCORE")
            .arg(&self.members)
            .arg("-inf")
            .arg(now)
            .cmd("ZRANGE")
            .arg(&self.members)
            .arg(0)
            .arg(-1)
            .cmd("PEXPIRE")
            .arg(&self.members)
            .arg(ttl.as_millis() as u64 * 2)
            .ignore()
            .query_async(&mut self.conn)
            .await?;
        let mut members = members;
        members.sort();
        let rank = members.iter().position(|m| *m == self.member).unwrap_or(0);
        let count = members.len().max(1);
        let share: BTreeSet<u32> = (0..self.streams.len() as u32)
            .filter(|p| *p as usize % count == rank)
            .collect();

        let giving_up: Vec<u32> = self.owned.difference(&share).copied().collect();
        if !giving_up.is_empty() {
            for p in &giving_up {
                self.owned.remove(p);
            }
            self.revoke(giving_up).await;
        }

        // Renew what is owned and try to take the rest of the share, in one round trip.
        let wanted: Vec<u32> = share.iter().copied().collect();
        let mut pipe = redis::pipe();
        for &p in &wanted {
            pipe.cmd("EVAL")
                .arg(scripts::ACQUIRE)
                .arg(1)
                .arg(&self.leases[p as usize])
                .arg(&self.member)
                .arg(ttl.as_millis() as u64);
        }
        let held: Vec<i64> = if wanted.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut self.conn).await?
        };
        self.lease_until = started + ttl;
        let mut taken = Vec::new();
        let mut lost = Vec::new();
        for (&p, &holds) in wanted.iter().zip(&held) {
            match (holds == 1, self.owned.contains(&p)) {
                (true, false) => taken.push(p),
                (false, true) => lost.push(p),
                _ => {}
            }
        }
        if !lost.is_empty() {
            for p in &lost {
                self.owned.remove(p);
            }
            self.revoke(lost).await;
        }
        for &p in &taken {
            self.take_over(p).await?;
            self.owned.insert(p);
        }
        if !taken.is_empty() {
            tracing::debug!(topic = %self.topic, group = %self.group, member = %self.member, partitions = ?taken, "partitions taken");
            // Informational for the runtime: never wait for room (that would delay heartbeats).
            let _ = self.sender.try_send(Item::Event(Fetched::Assigned(taken)));
        }
        Ok(())
    }

    /// Unordered: renews membership, reads every partition, keeps this member's own pending
    /// entries from looking idle (so none is claimed while its handler runs), and asks for a
    /// sweep of what other members left.
    async fn renew_unordered(&mut self) -> Result<(), RedisError> {
        let ttl = self.settings.session_timeout;
        let now = now_ms();
        redis::pipe()
            .cmd("ZADD")
            .arg(&self.members)
            .arg(now + ttl.as_millis() as i64)
            .arg(&self.member)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&self.members)
            .arg("-inf")
            .arg(now)
            .ignore()
            .query_async::<()>(&mut self.conn)
            .await?;
        if self.owned.is_empty() {
            let all: Vec<u32> = (0..self.streams.len() as u32).collect();
            self.owned.extend(all.iter().copied());
            let _ = self.sender.try_send(Item::Event(Fetched::Assigned(all)));
        }
        let touch_after = (ttl / 3).as_millis() as u64;
        for stream in self.streams.clone() {
            let pending: Value = redis::cmd("XPENDING")
                .arg(&stream)
                .arg(&self.group)
                .arg("IDLE")
                .arg(touch_after)
                .arg("-")
                .arg("+")
                .arg(1000)
                .arg(&self.member)
                .query_async(&mut self.conn)
                .await?;
            let ids = pending_ids(&pending);
            if !ids.is_empty() {
                redis::cmd("XCLAIM")
                    .arg(&stream)
                    .arg(&self.group)
                    .arg(&self.member)
                    .arg(0)
                    .arg(ids)
                    .arg("JUSTID")
                    .query_async::<()>(&mut self.conn)
                    .await?;
            }
        }
        self.sweep = true;
        Ok(())
    }

    /// Unordered: claims entries idle longer than the session timeout (their member died or
    /// left them) and delivers them here.
    async fn claim_idle(
        &mut self,
        mut pipe: redis::Pipeline,
        acks: Acks,
        permits: mpsc::PermitIterator<'_, Item>,
        partitions: &[u32],
        epochs: &[u64],
    ) -> Result<(), RedisError> {
        let per_stream = (self.settings.batch / partitions.len()).max(1);
        for &p in partitions {
            pipe.cmd("XAUTOCLAIM")
                .arg(&self.streams[p as usize])
                .arg(&self.group)
                .arg(&self.member)
                .arg(self.settings.session_timeout.as_millis() as u64)
                .arg("0-0")
                .arg("COUNT")
                .arg(per_stream);
        }
        let replies: Vec<Value> = match pipe.query_async(&mut self.conn).await {
            Ok(replies) => replies,
            Err(error) => {
                self.control.lock().unwrap().restore_acks(acks);
                return Err(error);
            }
        };
        let mut permits = permits;
        let mut claimed = 0usize;
        for (&p, reply) in partitions.iter().zip(replies) {
            let Value::Array(parts) = reply else { continue };
            let Some(entries) = parts.into_iter().nth(1) else {
                continue;
            };
            for (id, fields) in parse_entries(entries) {
                let Some(permit) = permits.next() else { break };
                claimed += 1;
                permit.send(Item::Record {
                    epoch: epochs[p as usize],
                    id,
                    record: decode(p, id, fields),
                });
            }
        }
        if claimed > 0 {
            tracing::info!(topic = %self.topic, group = %self.group, claimed, "claimed entries other members left pending");
        }
        Ok(())
    }

    /// Claims every entry the group left pending on partition `p` (its previous owner is gone
    /// or gave it up), to be read again from this member's pending list.
    async fn take_over(&mut self, p: u32) -> Result<(), RedisError> {
        let stream = &self.streams[p as usize];
        let mut cursor = "0-0".to_owned();
        let mut claimed = 0usize;
        loop {
            let reply: Value = redis::cmd("XAUTOCLAIM")
                .arg(stream)
                .arg(&self.group)
                .arg(&self.member)
                .arg(0)
                .arg(&cursor)
                .arg("COUNT")
                .arg(1000)
                .arg("JUSTID")
                .query_async(&mut self.conn)
                .await?;
            let Value::Array(parts) = &reply else { break };
            if let Some(Value::Array(ids)) = parts.get(1) {
                claimed += ids.len();
            }
            cursor = parts
                .first()
                .and_then(bytes_of)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .unwrap_or_else(|| "0-0".into());
            if cursor == "0-0" {
                break;
            }
        }
        if claimed > 0 {
            tracing::info!(topic = %self.topic, group = %self.group, partition = p, claimed, "claimed pending entries");
        }
        let mut control = self.control.lock().unwrap();
        control.epochs[p as usize] += 1;
        control.replay_after[p as usize] = Some(StreamId::ZERO);
        Ok(())
    }

    /// Tells the consumer `partitions` are gone (after sending their acknowledgements) and
    /// gives up their leases.
    async fn revoke(&mut self, partitions: Vec<u32>) {
        {
            let mut control = self.control.lock().unwrap();
            for &p in &partitions {
                control.epochs[p as usize] += 1;
                control.replay_after[p as usize] = None;
            }
        }
        let _ = self.flush_acks().await;
        // Entries of these partitions still queued are stale (their epoch moved), so a full
        // queue may drop the event without harm; waiting would delay heartbeats.
        let _ = self
            .sender
            .try_send(Item::Event(Fetched::Revoked(partitions.clone())));
        let _: Result<(), RedisError> = self.releasing(&partitions).query_async(&mut self.conn).await;
    }

    /// A pipeline that acknowledges `acks` (one XACK per partition).
    fn acking(&self, acks: &Acks) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        for (p, ids) in acks {
            let ids: Vec<String> = ids.iter().map(StreamId::to_string).collect();
            pipe.cmd("XACK")
                .arg(&self.streams[*p])
                .arg(&self.group)
                .arg(ids)
                .ignore();
        }
        pipe
    }

    /// A pipeline that gives up the leases of `partitions` (those this member still holds).
    fn releasing(&self, partitions: &[u32]) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        for &p in partitions {
            pipe.cmd("EVAL")
                .arg(scripts::RELEASE)
                .arg(1)
                .arg(&self.leases[p as usize])
                .arg(&self.member)
                .ignore();
        }
        pipe
    }

    async fn flush_acks(&mut self) -> Result<(), RedisError> {
        let acks = self.control.lock().unwrap().take_acks();
        if acks.is_empty() {
            return Ok(());
        }
        let sent: Result<(), RedisError> = self.acking(&acks).query_async(&mut self.conn).await;
        if sent.is_err() {
            self.control.lock().unwrap().restore_acks(acks);
        }
        sent
    }

    /// Deletes, from the streams this member owns, the entries every group has acknowledged
    /// and that are older than the retention. Unacknowledged entries are never trimmed.
    async fn trim(&mut self) -> Result<(), RedisError> {
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

    /// Unordered: marks this member's unfinished entries as long idle, so the next sweep of
    /// any member claims them at once instead of after the session timeout.
    async fn hand_over_pending(&mut self) {
        let idle = self.settings.session_timeout.as_millis() as u64 * 10;
        for stream in self.streams.clone() {
            let pending: Result<Value, RedisError> = redis::cmd("XPENDING")
                .arg(&stream)
                .arg(&self.group)
                .arg("-")
                .arg("+")
                .arg(10_000)
                .arg(&self.member)
                .query_async(&mut self.conn)
                .await;
            let ids = pending.map(|p| pending_ids(&p)).unwrap_or_default();
            if ids.is_empty() {
                continue;
            }
            let _: Result<Value, RedisError> = redis::cmd("XCLAIM")
                .arg(&stream)
                .arg(&self.group)
                .arg(&self.member)
                .arg(0)
                .arg(ids)
                .arg("IDLE")
                .arg(idle)
                .arg("JUSTID")
                .query_async(&mut self.conn)
                .await;
        }
    }

    /// Sends the last acknowledgements, gives up leases and membership, and removes this
    /// member's name from the group when it has nothing pending.
    async fn leave(mut self) -> Result<(), BackendError> {
        let mut flushed = self.flush_acks().await;
        for _ in 0..20 {
            if flushed.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            flushed = self.flush_acks().await;
        }
        if self.settings.unordered {
            self.hand_over_pending().await;
        }
        let owned: Vec<u32> = std::mem::take(&mut self.owned).into_iter().collect();
        let mut pipe = self.releasing(&owned);
        pipe.cmd("ZREM").arg(&self.members).arg(&self.member).ignore();
        let _: Result<(), RedisError> = pipe.query_async(&mut self.conn).await;
        for stream in &self.streams {
            let pending: Result<Value, RedisError> = redis::cmd("XPENDING")
                .arg(stream)
                .arg(&self.group)
                .arg("-")
                .arg("+")
                .arg(1)
                .arg(&self.member)
                .query_async(&mut self.conn)
                .await;
            if matches!(pending, Ok(Value::Array(ref entries)) if entries.is_empty()) {
                let _: Result<i64, RedisError> = redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(stream)
                    .arg(&self.group)
                    .arg(&self.member)
                    .query_async(&mut self.conn)
                    .await;
            }
        }
        flushed.map_err(transport)
    }
}

/// Whether the server said a consumer group is missing (`NOGROUP`), alone or among the errors
/// of a pipeline.
fn is_missing_group(error: &RedisError) -> bool {
    error.code() == Some("NOGROUP")
        || error
            .clone()
            .into_server_errors()
            .is_some_and(|errors| errors.iter().any(|(_, e)| e.code() == "NOGROUP"))
}

/// The IDs of an extended XPENDING reply (`[[id, consumer, idle, deliveries], ...]`).
fn pending_ids(value: &Value) -> Vec<String> {
    let Value::Array(entries) = value else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|entry| match entry {
            Value::Array(parts) => Some(String::from_utf8_lossy(bytes_of(parts.first()?)?).into_owned()),
            _ => None,
        })
        .collect()
}

/// `[[key, entries], ...]` of an XREADGROUP reply (nil when nothing came).
fn stream_replies(value: Value) -> Vec<(Vec<u8>, Value)> {
    match value {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(pair) => {
                    let mut pair = pair.into_iter();
                    Some((into_bytes(pair.next()?)?, pair.next()?))
                }
                _ => None,
            })
            .collect(),
        Value::Map(map) => map
            .into_iter()
            .filter_map(|(k, v)| Some((into_bytes(k)?, v)))
            .collect(),
        _ => Vec::new(),
    }
}
