//! Membership of the group: heartbeats that renew it, the share of partitions each member
//! leases (or, unordered, claims of what other members left), take-overs, revocations, and
//! leaving.

use std::collections::BTreeSet;
use std::time::Duration;

use backon::{BackoffBuilder as _, ConstantBuilder};
use redis::{RedisError, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::follow::Membership;
use super::reader::Reader;
use super::{Acks, Item};
use crate::backend::redis::error::transport;
use crate::backend::redis::fields::decode;
use crate::backend::redis::reply::{bytes_of, parse_entries, pending_ids};
use crate::backend::redis::scripts;
use crate::backend::redis::stream_id::StreamId;
use crate::backend::Fetched;
use crate::clock::now_ms;
use crate::error::BackendError;

impl Reader {
    /// Renews membership and leases, then gives up what expired meanwhile. Whether the
    /// renewal succeeded.
    pub(super) async fn heartbeat(&mut self) -> bool {
        if self.membership.follows() {
            // No membership of its own: only what its main member holds, taken again where a
            // take failed.
            self.take_wanted().await;
            return true;
        }
        let renewed = if self.settings.unordered {
            self.renew_unordered().await
        } else {
            self.rebalance().await
        };
        if let Err(error) = &renewed {
            tracing::warn!(topic = %self.topic, group = %self.group, %error, "redis membership renewal failed; retrying");
        }
        self.give_up_expired_leases().await;
        renewed.is_ok()
    }

    /// Leases not renewed in time may belong to another member by now: their partitions are
    /// given up (ordered consumers only; unordered ones hold no leases).
    async fn give_up_expired_leases(&mut self) {
        let leases = !self.settings.unordered && !self.membership.follows();
        if leases && Instant::now() >= self.lease_until && !self.owned.is_empty() {
            let lost: Vec<u32> = std::mem::take(&mut self.owned).into_iter().collect();
            tracing::warn!(topic = %self.topic, group = %self.group, partitions = ?lost, "leases expired; partitions given up");
            self.revoke(lost).await;
        }
    }

    /// Renews membership, computes this member's share of the partitions, gives up what is no
    /// longer its share, and takes what is (once the previous owner's lease is gone).
    pub(super) async fn rebalance(&mut self) -> Result<(), RedisError> {
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
            pipe.invoke_script(
                scripts::ACQUIRE
                    .key(&self.leases[p as usize])
                    .arg(&self.member)
                    .arg(ttl.as_millis() as u64),
            );
        }
        let held: Vec<i64> = if wanted.is_empty() {
            Vec::new()
        } else {
            scripts::query(&pipe, &mut self.conn).await?
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
            // A partition taken may have retries due before the ones known (on a cluster each
            // partition has its own delay set): look at the sets again in the next read.
            self.next_due = None;
            tracing::debug!(topic = %self.topic, group = %self.group, member = %self.member, partitions = ?taken, "partitions taken");
            if let Membership::Joins(Some(followers)) = &self.membership {
                followers.take(&taken);
            }
            // Informational for the runtime: never wait for room (that would delay heartbeats).
            let _ = self.sender.try_send(Item::Event(Fetched::Assigned(taken)));
        }
        Ok(())
    }

    /// Unordered: renews membership, reads every partition, keeps this member's own pending
    /// entries from looking idle (so none is claimed while its handler runs), and asks for a
    /// sweep of what other members left.
    pub(super) async fn renew_unordered(&mut self) -> Result<(), RedisError> {
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
    pub(super) async fn claim_idle(
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
                let sent = &mut self.sent_up_to[p as usize];
                *sent = (*sent).max(Some(id));
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
    pub(super) async fn take_over(&mut self, p: u32) -> Result<(), RedisError> {
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
    /// gives up their leases, once the followers gave them up.
    pub(super) async fn revoke(&mut self, partitions: Vec<u32>) {
        if let Membership::Joins(Some(followers)) = &self.membership {
            followers.give_up(&partitions).wait(&self.topic).await;
        }
        let releasing = self.releasing(&partitions);
        self.drop_partitions(partitions).await;
        let _: Result<(), RedisError> = scripts::query(&releasing, &mut self.conn).await;
    }

    /// Tells the consumer `partitions` are gone, after sending their acknowledgements.
    pub(super) async fn drop_partitions(&mut self, partitions: Vec<u32>) {
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
        let _ = self.sender.try_send(Item::Event(Fetched::Revoked(partitions)));
    }

    /// A pipeline that gives up the leases of `partitions` (those this member still holds).
    pub(super) fn releasing(&self, partitions: &[u32]) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        for &p in partitions {
            pipe.invoke_script(scripts::RELEASE.key(&self.leases[p as usize]).arg(&self.member))
                .ignore();
        }
        pipe
    }

    /// Unordered: marks this member's unfinished entries as long idle, so the next sweep of
    /// any member claims them at once instead of after the session timeout.
    pub(super) async fn hand_over_pending(&mut self) {
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
    pub(super) async fn leave(mut self) -> Result<(), BackendError> {
        // Up to 5 s more for the server to come back: what is acknowledged here is not redone.
        let pauses = ConstantBuilder::new()
            .with_delay(Duration::from_millis(250))
            .with_max_times(20)
            .build();
        let mut flushed = self.flush_acks().await;
        for pause in pauses {
            if flushed.is_ok() {
                break;
            }
            tokio::time::sleep(pause).await;
            flushed = self.flush_acks().await;
        }
        if self.settings.unordered {
            self.hand_over_pending().await;
        }
        let owned: Vec<u32> = std::mem::take(&mut self.owned).into_iter().collect();
        if let Membership::Joins(Some(followers)) = &self.membership {
            // Before the leases go: the next owner's followers must find these unread here.
            followers.give_up(&owned).wait(&self.topic).await;
        }
        let mut pipe = self.releasing(&owned);
        pipe.cmd("ZREM").arg(&self.members).arg(&self.member).ignore();
        let _: Result<(), RedisError> = scripts::query(&pipe, &mut self.conn).await;
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
