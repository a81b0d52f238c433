//! A worker of a retry level: claims due rows, delivers them, marks acknowledged ones handled.
//!
//! Rows are shared work, not partitions: every worker of a level reads every partition and
//! takes what is due with `FOR UPDATE SKIP LOCKED`, so the first [`Fetched`] is an assignment
//! of all partitions and none is ever revoked. A claim is a lease, renewed by the worker's
//! keeper task while it lives; a crashed worker's rows are claimed again once their lease
//! ends. Holding a partition only stops claiming its rows (the runtime holds one behind a
//! failed hand-off); rows claimed already stay with this worker and are delivered on resume.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::types::{ToSql, Type};

use super::error::transport;
use super::follow::Followed;
use super::link::Link;
use super::sql::params;
use super::{decode, sql, Postgres, Settings};
use crate::backend::follow::{Followers, Following};
use crate::backend::{
    Consumer, Fetched, HandOffId, HandOffReports, HandOffTasks, OutboundRecord, Position, Record, Topic,
    Undelivered,
};
use crate::clock::{instant_at, now_ms};
use crate::error::BackendError;

/// Due rows claimed, or when to look again.
struct Claimed {
    records: Vec<Record>,
    /// When the next row this worker could claim is due; `None` when there is none.
    next_due: Option<i64>,
}

type Claim = Pin<Box<dyn Future<Output = Result<Claimed, BackendError>> + Send>>;

/// A worker of one retry level on [`Postgres`].
///
/// ```no_run
/// use retry_kafka::backend::postgres::Postgres;
/// use retry_kafka::backend::{Consumer, Fetched, RetryStore, Topic, TopicRole};
///
/// # async fn drain(postgres: Postgres) -> Result<(), retry_kafka::error::BackendError> {
/// let topic = "orders.billing.retry.1";
/// let mut worker = postgres.consume(Topic::new(topic, TopicRole::Retry { level: 1 })).await?;
/// while let Fetched::Record(record) = worker.next().await? {
///     worker.ack(record.partition, record.offset).await?;
/// }
/// # Ok(()) }
/// ```
pub struct PostgresConsumer {
    backend: Postgres,
    topic: Arc<str>,
    member: Arc<str>,
    link: Arc<Link>,
    partitions: u32,
    announced: bool,
    /// Claimed rows not delivered yet, in claim order.
    buffer: VecDeque<Record>,
    held: Vec<i32>,
    /// Per partition, offsets delivered and not acknowledged.
    delivered: Vec<Vec<u64>>,
    /// A claim under way, kept across cancelled `next` calls: rows it claims are never lost.
    claiming: Option<Claim>,
    /// After a claim found nothing: when to look again at the latest.
    idle_until: Option<Instant>,
    wake: watch::Receiver<u64>,
    acks: Option<mpsc::UnboundedSender<(u32, u64)>>,
    keeper: Option<JoinHandle<()>>,
    /// Hand-offs' statements, many at once, each reported by its id.
    hand_offs: HandOffTasks<(Position, Topic, OutboundRecord)>,
    hand_off_reports: HandOffReports,
    /// A key-ordered handler's worker: the partitions its main member holds (`follow.rs`).
    followed: Option<Arc<Followed>>,
}

impl PostgresConsumer {
    /// A worker of `level`; following the main member of `followers` when given.
    pub(crate) async fn start(
        backend: Postgres,
        level: Topic,
        partitions: u32,
        followers: Option<&Followers>,
    ) -> Result<Self, BackendError> {
        let link = Arc::new(Link::new(backend.connector().clone()));
        link.client().await?;
        let topic: Arc<str> = level.name;
        let member: Arc<str> = backend.member_name().into();
        let wake = backend.watch(&topic);
        let (acks, received) = mpsc::unbounded_channel();
        let following = followers.map(Followed::join);
        let followed = following.as_ref().map(|(followed, _)| followed.clone());
        let keeper = tokio::spawn(keep(
            link.clone(),
            topic.clone(),
            member.clone(),
            backend.settings().clone(),
            received,
            following,
        ));
        let hand_off_reports = HandOffReports::new();
        let hand_offs = {
            let (backend, topic) = (backend.clone(), topic.clone());
            HandOffTasks::spawn(
                hand_off_reports.clone(),
                move |(from, to, record): (Position, Topic, OutboundRecord)| {
                    let (backend, source) = (backend.clone(), (topic.clone(), from.partition, from.offset));
                    async move {
                        let written = backend.write(&to, &record, Some(&source)).await;
                        written.map_err(|error| Undelivered::new(error, record))
                    }
                },
            )
        };
        Ok(PostgresConsumer {
            hand_offs,
            hand_off_reports,
            backend,
            topic,
            member,
            link,
            partitions,
            announced: false,
            buffer: VecDeque::new(),
            held: Vec::new(),
            delivered: Vec::new(),
            claiming: None,
            idle_until: None,
            wake,
            acks: Some(acks),
            keeper: Some(keeper),
            followed,
        })
    }

    fn claim(&self) -> Claim {
        let (link, topic, member) = (self.link.clone(), self.topic.clone(), self.member.clone());
        // Held partitions, and a follower's partitions its main member does not hold.
        let mut held = self.held.clone();
        let claims = self.followed.as_ref().map(|followed| {
            held.extend(followed.not_owned(self.partitions));
            followed.claims.clone()
        });
        let settings = self.backend.settings();
        let (lease, batch) = (settings.lease.as_millis() as i64, settings.batch);
        Box::pin(async move {
            // A follower's give-up waits for this claim before it gives its rows back.
            let _claiming = match claims {
                Some(claims) => Some(claims.read_owned().await),
                None => None,
            };
            let client = link.client().await?;
            let now = now_ms();
            let until = now + lease;
            let rows = client
                .query_typed(
                    sql::CLAIM,
                    params![
                        (&&*topic, Type::TEXT),
                        (&&*member, Type::TEXT),
                        (&now, Type::INT8),
                        (&until, Type::INT8),
                        (&held, Type::INT4_ARRAY),
                        (&batch, Type::INT8),
                    ],
                )
                .await
                .map_err(transport)?;
            if !rows.is_empty() {
                // RETURNING has no order: deliver in due order, then partition and offset.
                let mut claimed: Vec<(i64, Record)> =
                    rows.iter().map(|row| (row.get(0), decode(row, 1))).collect();
                claimed.sort_unstable_by_key(|(due, r)| (*due, r.partition, r.offset));
                return Ok(Claimed {
                    records: claimed.into_iter().map(|(_, r)| r).collect(),
                    next_due: None,
                });
            }
            let row = client
                .query_typed(
                    sql::NEXT_DUE,
                    params![
                        (&&*topic, Type::TEXT),
                        (&&*member, Type::TEXT),
                        (&held, Type::INT4_ARRAY),
                    ],
                )
                .await
                .map_err(transport)?;
            Ok(Claimed {
                records: Vec::new(),
                next_due: row.first().and_then(|row| row.get(0)),
            })
        })
    }
}

impl Consumer for PostgresConsumer {
    async fn next(&mut self) -> Result<Fetched, BackendError> {
        if self.followed.is_none() && !self.announced {
            self.announced = true;
            return Ok(Fetched::Assigned((0..self.partitions).collect()));
        }
        loop {
            if let Some(event) = self.followed.as_ref().and_then(|f| f.next_event()) {
                if let Fetched::Revoked(partitions) = &event {
                    // Given back by the keeper: another worker takes them from here.
                    self.buffer.retain(|r| !partitions.contains(&r.partition));
                }
                return Ok(event);
            }
            let followed = self.followed.as_deref();
            let free = self.buffer.iter().position(|r| {
                !self.held.contains(&(r.partition as i32)) && followed.is_none_or(|f| f.owns(r.partition))
            });
            if let Some(record) = free.and_then(|at| self.buffer.remove(at)) {
                let p = record.partition as usize;
                if p >= self.delivered.len() {
                    self.delivered.resize_with(p + 1, Vec::new);
                }
                self.delivered[p].push(record.offset);
                if let Some(followed) = followed {
                    followed.delivered(record.partition);
                }
                return Ok(Fetched::Record(record));
            }
            if let Some(followed) = &self.followed {
                if followed.owns_none() && self.claiming.is_none() {
                    // Nothing to claim until its main member takes a partition.
                    let followed = followed.clone();
                    followed.changed.notified().await;
                    continue;
                }
            }
            if self.claiming.is_none() {
                if let Some(until) = self.idle_until {
                    // Nothing due: sleep until the next due time, a write to the topic, the
                    // poll interval (a notification missed while the listener reconnected), or
                    // a follower's change of partitions.
                    let changed = self.followed.clone();
                    let partitions_changed = async move {
                        match changed {
                            Some(followed) => followed.changed.notified().await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        changed = self.wake.changed() => if changed.is_err() {
                            tokio::time::sleep_until(until).await;
                        },
                        _ = tokio::time::sleep_until(until) => {}
                        _ = partitions_changed => {}
                    }
                    self.idle_until = None;
                }
                // Seen before the query: a write notified after it wakes the next wait.
                self.wake.borrow_and_update();
                self.claiming = Some(self.claim());
            }
            let claimed = self.claiming.as_mut().expect("set above").await;
            self.claiming = None;
            let claimed = claimed?;
            if claimed.records.is_empty() {
                let poll = Instant::now() + self.backend.settings().poll;
                let due = claimed.next_due.map(|due| instant_at(due) + wake_spread());
                self.idle_until = Some(due.map_or(poll, |due| due.min(poll)));
            } else if (claimed.records.len() as i64) < self.backend.settings().batch {
                // At the due frontier (no backlog): the next claim waits a random moment too,
                // or a worker that just finished its rows would always claim the next one
                // before the workers that sleep until it is due.
                self.idle_until = Some(Instant::now() + wake_spread());
            }
            self.buffer.extend(claimed.records);
        }
    }

    fn hold(&mut self, partition: u32, _offset: u64) {
        let partition = partition as i32;
        if !self.held.contains(&partition) {
            self.held.push(partition);
        }
    }

    fn resume(&mut self, partition: u32) {
        self.held.retain(|&p| p != partition as i32);
        // The claim query excluded it: look again rather than sleep on its last answer.
        self.idle_until = None;
    }

    /// Writes the next hop and marks the source row handled in one statement.
    fn hand_off(&mut self, id: HandOffId, from: Position, to: Topic, record: OutboundRecord) {
        self.hand_offs.start(id, (from, to, record));
    }

    fn hand_off_reports(&self) -> &HandOffReports {
        &self.hand_off_reports
    }

    /// Hands the rows this worker delivered up to `offset` to its keeper, which marks them
    /// handled in batches: no round trip per message in line.
    async fn ack(&mut self, partition: u32, offset: u64) -> Result<(), BackendError> {
        let (Some(delivered), Some(acks)) = (self.delivered.get_mut(partition as usize), &self.acks) else {
            return Ok(());
        };
        let before = delivered.len();
        delivered.retain(|&o| {
            if o <= offset {
                let _ = acks.send((partition, o));
                false
            } else {
                true
            }
        });
        if let Some(followed) = &self.followed {
            // After the sends: a give-up that sees none in flight finds them all queued.
            followed.acknowledged(partition, before - delivered.len());
        }
        Ok(())
    }

    /// Marks what was acknowledged handled and gives this worker's other rows back.
    async fn close(mut self) -> Result<(), BackendError> {
        // Hand-offs under way finish first: their sources are marked handled by them.
        self.hand_offs.close().await;
        self.acks = None;
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.await;
        }
        Ok(())
    }
}

impl Drop for PostgresConsumer {
    /// Without `close`, the keeper still flushes what was acknowledged and gives the rows
    /// back: it ends by itself once the acknowledgement channel closes here.
    fn drop(&mut self) {
        self.acks = None;
    }
}

/// Up to 2 ms after a due time, different for every wake-up: workers that sleep until the same
/// due time would otherwise wake in the same timer tick, and the one whose timer fires first
/// would claim every due row, wake after wake (the joining member of a level got none).
fn wake_spread() -> Duration {
    use std::hash::BuildHasher as _;
    // A fresh RandomState has fresh keys: a cheap random number, no dependency.
    let random = std::collections::hash_map::RandomState::new().hash_one(0u8);
    Duration::from_micros(random % 2000)
}

/// The keeper: marks acknowledged rows handled in batches, renews the worker's leases, sweeps
/// handled rows past the retention period; on close, flushes and releases the worker's rows.
async fn keep(
    link: Arc<Link>,
    topic: Arc<str>,
    member: Arc<str>,
    settings: Settings,
    mut acks: mpsc::UnboundedReceiver<(u32, u64)>,
    mut following: Option<(Arc<Followed>, mpsc::UnboundedReceiver<Following>)>,
) {
    let lease = settings.lease.as_millis() as i64;
    let renew_every = settings.lease / 3;
    let sweep_every = (settings.keep_handled / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut next_renew = Instant::now() + renew_every;
    let mut next_sweep = Instant::now() + sweep_every;
    let mut pending: Vec<(u32, u64)> = Vec::new();
    let mut open = true;
    loop {
        if !pending.is_empty() {
            match mark_handled(&link, &topic, &pending).await {
                Ok(()) => pending.clear(),
                Err(error) => {
                    tracing::warn!(%topic, %error, rows = pending.len(), "marking rows handled failed; trying again");
                    if !open {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        if !open {
            break;
        }
        tokio::select! {
            biased;
            received = acks.recv_many(&mut pending, 4096) => open = received > 0,
            _ = tokio::time::sleep_until(next_renew) => {
                next_renew = Instant::now() + renew_every;
                let until = now_ms() + lease;
                let renewed = run(&link, sql::RENEW, params![(&&*topic, Type::TEXT), (&&*member, Type::TEXT), (&until, Type::INT8)]).await;
                if let Err(error) = renewed {
                    tracing::warn!(%topic, %error, "renewing leases failed; rows may go to another worker");
                }
            }
            word = next_word(&mut following) => {
                let Some((followed, _)) = &following else { continue };
                let followed = followed.clone();
                match word {
                    Some(Following::Take(partitions)) => followed.take(partitions),
                    Some(Following::GiveUp(partitions, done)) => {
                        give_up(&link, &topic, &member, &followed, &partitions, &mut acks, &mut pending).await;
                        let _ = done.send(());
                    }
                    None => {
                        // The main member is gone without a word: claim nothing more.
                        following = None;
                        let owned = followed.owned();
                        give_up(&link, &topic, &member, &followed, &owned, &mut acks, &mut pending).await;
                    }
                }
            }
            _ = tokio::time::sleep_until(next_sweep) => {
                next_sweep = Instant::now() + sweep_every;
                let before = now_ms() - settings.keep_handled.as_millis() as i64;
                if let Err(error) = run(&link, sql::SWEEP, params![(&&*topic, Type::TEXT), (&before, Type::INT8)]).await {
                    tracing::debug!(%topic, %error, "deleting handled rows failed; the next sweep tries again");
                }
            }
        }
    }
    if let Err(error) = run(
        &link,
        sql::RELEASE,
        params![(&&*topic, Type::TEXT), (&&*member, Type::TEXT)],
    )
    .await
    {
        tracing::debug!(%topic, %error, "giving rows back failed; they return when their lease ends");
    }
}

/// The next word of the main member a worker follows; never, for a worker of its own.
async fn next_word(
    following: &mut Option<(Arc<Followed>, mpsc::UnboundedReceiver<Following>)>,
) -> Option<Following> {
    match following {
        Some((_, words)) => words.recv().await,
        None => std::future::pending().await,
    }
}

/// A follower gives `partitions` up: no more claims there, the rows delivered from them
/// acknowledged (300 ms at most) and marked handled, then every row of theirs it still holds
/// given back once no claim is under way.
async fn give_up(
    link: &Link,
    topic: &str,
    member: &str,
    followed: &Followed,
    partitions: &[u32],
    acks: &mut mpsc::UnboundedReceiver<(u32, u64)>,
    pending: &mut Vec<(u32, u64)>,
) {
    let given = followed.give_up(partitions);
    if given.is_empty() {
        return;
    }
    followed.drained(&given).await;
    while let Ok(ack) = acks.try_recv() {
        pending.push(ack);
    }
    if !pending.is_empty() {
        match mark_handled(link, topic, pending).await {
            Ok(()) => pending.clear(),
            Err(error) => {
                tracing::warn!(%topic, %error, "marking rows handled before giving partitions up failed")
            }
        }
    }
    let _no_claim = followed.claims.write().await;
    let given: Vec<i32> = given.iter().map(|&p| p as i32).collect();
    let released = run(
        link,
        sql::RELEASE_PARTITIONS,
        params![
            (&topic, Type::TEXT),
            (&member, Type::TEXT),
            (&given, Type::INT4_ARRAY)
        ],
    )
    .await;
    if let Err(error) = released {
        tracing::warn!(%topic, %error, "giving rows back failed; they return when their lease ends");
    }
}

async fn mark_handled(link: &Link, topic: &str, rows: &[(u32, u64)]) -> Result<(), BackendError> {
    let partitions: Vec<i32> = rows.iter().map(|&(p, _)| p as i32).collect();
    let offsets: Vec<i64> = rows.iter().map(|&(_, o)| o as i64).collect();
    let now = now_ms();
    run(
        link,
        sql::ACK,
        params![
            (&topic, Type::TEXT),
            (&partitions, Type::INT4_ARRAY),
            (&offsets, Type::INT8_ARRAY),
            (&now, Type::INT8),
        ],
    )
    .await
}

async fn run(
    link: &Link,
    statement: &str,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> Result<(), BackendError> {
    let client = link.client().await?;
    client.query_typed(statement, params).await.map_err(transport)?;
    Ok(())
}
