//! The task behind a [`RedisConsumer`](super::RedisConsumer): one loop that heartbeats, trims,
//! flushes acknowledgements and reads, each when due, and recovers from a failed round.
//! Membership and leases are in `membership.rs`, trimming in `trim.rs`, the timers in
//! `pacing.rs`.

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::{RedisError, Value};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::follow::Membership;
use super::pacing::{AckDebounce, Every, Heartbeat, Recover, Recovery};
use super::{create_group, Acks, Control, Item};
use crate::backend::redis::fields::decode;
use crate::backend::redis::link::Link;
use crate::backend::redis::reply::{parse_entries, stream_replies};
use crate::backend::redis::stream_id::StreamId;
use crate::backend::redis::{scripts, Settings};
use crate::clock::now_ms;
use crate::error::BackendError;

/// The task behind a [`RedisConsumer`](super::RedisConsumer).
pub(super) struct Reader {
    pub(super) topic: String,
    pub(super) group: String,
    pub(super) member: String,
    pub(super) streams: Vec<String>,
    /// The delay sets to move due entries from, on a retry level: the topic's one, or on a
    /// cluster one per partition (where only an owned partition's is moved). Empty elsewhere.
    pub(super) delayed: Vec<String>,
    pub(super) members: String,
    pub(super) leases: Vec<String>,
    pub(super) conn: Link,
    pub(super) blocking: Link,
    pub(super) settings: Settings,
    pub(super) sender: mpsc::Sender<Item>,
    pub(super) control: Arc<Mutex<Control>>,
    pub(super) wake: Arc<Notify>,
    pub(super) acked: Arc<Notify>,
    pub(super) stop: CancellationToken,
    pub(super) owned: BTreeSet<u32>,
    /// Its own share of the group, or its main member's partitions.
    pub(super) membership: Membership,
    /// A follower's: the partitions its main member holds (taken, or to be taken).
    pub(super) wanted: BTreeSet<u32>,
    /// Until when the leases of `owned` are known to hold.
    pub(super) lease_until: Instant,
    /// When the next entry in the delay set is due (epoch ms), if known.
    pub(super) next_due: Option<i64>,
    /// Unordered: claim what other members left pending, in the next round.
    pub(super) sweep: bool,
    /// The last entry of each partition sent to the consumer (by reads; claims of the
    /// unordered mode too), for [`Reader::read_pending_first`].
    pub(super) sent_up_to: Vec<Option<StreamId>>,
    /// The last read filled its count on some stream: more is there already, so the next read
    /// waits for nothing (a move takes up to 1,000 due entries, a read [`Settings::batch`]).
    pub(super) behind: bool,
}

impl Reader {
    /// Until stopped: heartbeats, trims, flushes acknowledgements and reads, each when due;
    /// a failed round is recovered from. Then leaves the group.
    pub(super) async fn run(mut self) -> Result<(), BackendError> {
        let mut heartbeat = Heartbeat::new(self.settings.session_timeout);
        let mut trim = Every::new(self.settings.trim_interval);
        let mut acks = AckDebounce::default();
        let mut recovery = Recovery::default();
        // A handle of its own, so waiting for room does not borrow `self`.
        let sender = self.sender.clone();
        while !self.stop.is_cancelled() {
            // A follower's word first: what it reads depends on it.
            while let Some(command) = self.membership.try_next() {
                self.follow(command).await;
            }
            if heartbeat.is_due() {
                heartbeat.renewed(self.heartbeat().await);
            }
            if trim.elapsed() {
                if let Err(error) = self.trim().await {
                    tracing::debug!(topic = %self.topic, %error, "trim failed");
                }
            }
            let result = tokio::select! {
                _ = self.stop.cancelled() => break,
                permits = sender.reserve_many(self.settings.batch) => match permits {
                    Ok(permits) => self.read(permits, heartbeat.next).await,
                    Err(_) => break, // the consumer is gone
                },
                _ = self.acked.notified(), if !acks.is_waiting() => {
                    acks.start();
                    Ok(())
                }
                _ = acks.elapsed(), if acks.is_waiting() => self.flush_acks().await,
                _ = tokio::time::sleep_until(heartbeat.next) => Ok(()),
                command = self.membership.next() => {
                    self.follow(command).await;
                    Ok(())
                }
            };
            if self.recover(&mut recovery, result).await.is_break() {
                break;
            }
        }
        self.leave().await
    }

    /// After a round: on success, nothing; after a failure, what [`Recovery`] says. Breaks
    /// when stopped meanwhile.
    async fn recover(&mut self, recovery: &mut Recovery, result: Result<(), RedisError>) -> ControlFlow<()> {
        let error = match result {
            Ok(()) => {
                recovery.succeeded();
                return ControlFlow::Continue(());
            }
            Err(error) => error,
        };
        match recovery.failed(&error) {
            Recover::CreateGroup => {
                tracing::warn!(topic = %self.topic, group = %self.group, "consumer group missing; creating it again");
                for stream in self.streams.clone() {
                    let _ = create_group(&mut self.conn, &stream, &self.group).await;
                }
            }
            Recover::Pause(pause) => {
                tracing::warn!(topic = %self.topic, group = %self.group, %error, retry_in = ?pause, "redis read failed; retrying");
                tokio::select! {
                    _ = self.stop.cancelled() => return ControlFlow::Break(()),
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
        ControlFlow::Continue(())
    }

    /// One round trip: send pending acknowledgements, move due retries, and read.
    pub(super) async fn read(
        &mut self,
        permits: mpsc::PermitIterator<'_, Item>,
        next_heartbeat: Instant,
    ) -> Result<(), RedisError> {
        // A retry level that knows when its next entry is due waits for it here, on a precise
        // timer, rather than in the server: a blocked read's timeout is only noticed on the
        // server's next tick (100 ms at the default `hz`), which made retries up to ~100 ms
        // late. Nothing has been taken yet, so being cancelled meanwhile loses nothing.
        let mut waited_for_due = false;
        if let (false, Some(due), false) = (self.delayed.is_empty(), self.next_due, self.behind) {
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
        let cluster = self.conn.is_cluster();
        let moves: Vec<&String> = match (self.next_due.is_none_or(|due| due <= now), cluster) {
            (false, _) => Vec::new(),
            (true, false) => self.delayed.iter().collect(),
            (true, true) => self
                .owned
                .iter()
                .filter_map(|&p| self.delayed.get(p as usize))
                .collect(),
        };
        let moving = !moves.is_empty();
        for delayed in &moves {
            pipe.invoke_script(scripts::MOVE_DUE.key(*delayed).arg(now).arg(1000));
        }
        let streams: Vec<(u32, String)> = if replaying {
            // History reads do not block: read the pending entries first.
            replay.iter().map(|&(p, after)| (p, after.to_string())).collect()
        } else {
            live.iter().map(|&p| (p, ">".to_owned())).collect()
        };
        let block = if replaying || cluster || (self.behind && !self.delayed.is_empty()) {
            // History reads do not block; nor does a retry level's read while it is behind:
            // what is there is read at once, and an empty read goes back to waiting for the
            // next due time on the precise timer, not on a blocked read's server-side timeout.
            None
        } else {
            let until_heartbeat = next_heartbeat.saturating_duration_since(Instant::now());
            let mut block = self.settings.block.min(until_heartbeat);
            if self.membership.follows() {
                // Its main member's word waits for the read's end: a give-up holds up that
                // member's rebalance, a take its retries.
                block = block.min(self.settings.due_poll);
            }
            if waited_for_due {
                // Waited already: only read what is there (and what the move just added).
                block = Duration::from_millis(1);
            } else if !self.delayed.is_empty() {
                let until_due = match self.next_due {
                    Some(due) => Duration::from_millis(due.saturating_sub(now).max(0) as u64),
                    None => self.settings.due_poll,
                };
                block = block.min(until_due.min(self.settings.due_poll.max(Duration::from_millis(1))));
            }
            Some(block.max(Duration::from_millis(1)))
        };
        let per_stream = (self.settings.batch / streams.len()).max(1);
        // One read of every stream; on a cluster, whose streams are in different slots, one
        // read per stream (`link.rs` sends each to its shard).
        let reads: Vec<&[(u32, String)]> = match cluster {
            false => vec![&streams[..]],
            true => streams.chunks(1).collect(),
        };
        for streams in &reads {
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
            for (p, _) in streams.iter() {
                read.arg(&self.streams[*p as usize]);
            }
            for (_, id) in streams.iter() {
                read.arg(id);
            }
        }
        // Each reply on its own: a move that failed (the server forgot the script, after a
        // restart) must not lose what the read took into this member's pending list.
        pipe.ignore_errors();
        let replies: Vec<Value> = match pipe.query_async(&mut self.blocking).await {
            Ok(replies) => replies,
            Err(error) => {
                // Unsent acknowledgements go back, to be sent with the next read.
                self.control.lock().unwrap().restore_acks(acks);
                if cluster && !replaying {
                    self.read_pending_first(&live, &epochs);
                }
                return Err(error);
            }
        };
        let mut replies = replies.into_iter();
        let mut moved = Ok(());
        if moving {
            self.next_due = None;
        }
        for reply in replies.by_ref().take(moves.len()) {
            match reply {
                Value::Array(reply) => {
                    if let Some(Value::Int(due)) =
                        reply.get(1).filter(|due| matches!(due, Value::Int(d) if *d >= 0))
                    {
                        self.next_due = Some(self.next_due.map_or(*due, |next| next.min(*due)));
                    }
                }
                Value::ServerError(error) => moved = Err(RedisError::from(error)),
                _ => {}
            }
        }
        // The reads' replies; a read that failed (on a cluster, one shard's) fails the round
        // once the others' entries are delivered, and its acknowledgements are sent again.
        let mut read_failed = None;
        let read: Vec<Value> = replies
            .filter_map(|reply| match reply {
                Value::ServerError(error) => {
                    read_failed = Some(RedisError::from(error));
                    None
                }
                reply => Some(reply),
            })
            .collect();
        if let Some(error) = read_failed.take_if(|_| read.is_empty()) {
            self.control.lock().unwrap().restore_acks(acks);
            if cluster && !replaying {
                self.read_pending_first(&live, &epochs);
            }
            return Err(error);
        }
        if read.is_empty() {
            return moved;
        }
        if read_failed.is_some() {
            self.control.lock().unwrap().restore_acks(acks);
        }
        let mut permits = permits;
        let mut read_any = vec![false; self.streams.len()];
        self.behind = false;
        for (key, entries) in read.into_iter().flat_map(stream_replies) {
            let Some(p) = self.streams.iter().position(|s| s.as_bytes() == key) else {
                continue;
            };
            let mut last = None;
            let mut unsent = None;
            let entries = parse_entries(entries);
            self.behind |= entries.len() >= per_stream;
            for (id, fields) in entries {
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
            if last.is_some() {
                self.sent_up_to[p] = last;
            }
            let mut control = self.control.lock().unwrap();
            if control.epochs[p] == epochs[p] {
                if let Some(first) = unsent {
                    control.replay_after[p] = Some(first.before());
                } else if replaying {
                    control.replay_after[p] = last;
                }
            }
        }
        if let Some(error) = read_failed {
            if cluster && !replaying {
                self.read_pending_first(&live, &epochs);
            }
            return Err(error);
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
        if cluster && !replaying && !self.behind && !read_any.contains(&true) {
            // A cluster's reads do not block (a blocked read would hold up its shard's
            // connection, which the other partitions' reads share): an empty round waits
            // `due_poll` (or until the next due retry, or a resume) before the next.
            let until_due = self
                .next_due
                .map(|due| Duration::from_millis(due.saturating_sub(now_ms()).max(1) as u64));
            let pause = next_heartbeat
                .saturating_duration_since(Instant::now())
                .min(self.settings.due_poll)
                .min(until_due.unwrap_or(Duration::MAX));
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
        match moved {
            // The server forgot the scripts (it restarted): load them for the next move.
            Err(error) if scripts::is_missing(&error) => scripts::load(&mut self.conn).await,
            moved => moved,
        }
    }

    /// On a cluster, after a read round that failed on some shard (its reads may have taken
    /// entries into this member's pending list, and their reply is lost): the live partitions
    /// read their pending entries after the last one delivered before new ones, so none is
    /// left pending and undelivered while this member keeps the partition.
    fn read_pending_first(&self, live: &[u32], epochs: &[u64]) {
        let mut control = self.control.lock().unwrap();
        for &p in live {
            let p = p as usize;
            if control.epochs[p] == epochs[p] && control.replay_after[p].is_none() {
                control.replay_after[p] = Some(self.sent_up_to[p].unwrap_or(StreamId::ZERO));
            }
        }
    }

    /// A pipeline that acknowledges `acks` (one XACK per partition).
    pub(super) fn acking(&self, acks: &Acks) -> redis::Pipeline {
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

    pub(super) async fn flush_acks(&mut self) -> Result<(), RedisError> {
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
}
