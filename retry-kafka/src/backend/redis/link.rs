//! A connection to one server, to the primary Redis Sentinel names, or to a Redis Cluster
//! ([`Link`]), so every command of the backend is written once, whichever the deployment.
//!
//! A cluster takes a pipeline only when all its keys are in one slot; the backend's pipelines
//! (acknowledgements of several partitions, lease renewals, a batch of hand-offs) span slots,
//! so a cluster link splits a pipeline by slot, sends the parts at once (redis-rs routes each
//! to its shard and follows MOVED and ASK redirections) and puts the replies back in the
//! pipeline's order. Commands of different slots are then not ordered against each other: no
//! caller relies on that (what must happen in order is sent in rounds: `hand_offs.rs`).

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{Arg, Cmd, Pipeline, RedisFuture, Value};

use super::sentinel::SentinelLink;

/// One server's connection, the Sentinel-managed primary's (asked of the sentinels again
/// after it failed: `sentinel.rs`), or a cluster's (a connection per shard, kept by redis-rs).
#[derive(Clone)]
pub(crate) enum Link {
    Server(ConnectionManager),
    Sentinel(SentinelLink),
    Cluster(ClusterConnection),
}

impl Link {
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Link::Cluster(_))
    }
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Server(conn) => conn.req_packed_command(cmd),
            Link::Sentinel(conn) => conn.req_packed_command(cmd),
            Link::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Server(conn) => conn.req_packed_commands(pipeline, offset, count),
            Link::Sentinel(conn) => conn.req_packed_commands(pipeline, offset, count),
            Link::Cluster(conn) => {
                // An atomic pipeline (MULTI/EXEC by `Pipeline::atomic`) is never split: the
                // cluster refuses it if its keys span slots, as it should.
                if offset != 0 || count != pipeline.len() {
                    return conn.req_packed_commands(pipeline, offset, count);
                }
                Box::pin(by_slot(conn.clone(), pipeline))
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Server(conn) => conn.get_db(),
            Link::Sentinel(conn) => conn.get_db(),
            Link::Cluster(conn) => conn.get_db(),
        }
    }
}

/// `pipeline` as one pipeline per slot, sent at once; the replies in `pipeline`'s order.
async fn by_slot(conn: ClusterConnection, pipeline: &Pipeline) -> redis::RedisResult<Vec<Value>> {
    if pipeline.is_empty() {
        return Ok(Vec::new());
    }
    let slots: Vec<Option<Slot>> = pipeline.cmd_iter().map(slot_of).collect();
    let mut conn = conn;
    if slots.iter().all(|slot| *slot == slots[0]) {
        // One slot (a partition's acknowledgements and read, a lease): as it is, no copy.
        return conn.req_packed_commands(pipeline, 0, pipeline.len()).await;
    }
    // (slot, the pipeline of that slot, the index of each of its commands in `pipeline`)
    let mut parts: Vec<(Option<Slot>, Pipeline, Vec<usize>)> = Vec::new();
    for (index, (cmd, slot)) in pipeline.cmd_iter().zip(slots).enumerate() {
        let part = match parts.iter_mut().position(|(s, _, _)| *s == slot) {
            Some(at) => &mut parts[at],
            None => {
                parts.push((slot, redis::pipe(), Vec::new()));
                parts.last_mut().expect("just pushed")
            }
        };
        part.1.add_command(cmd.clone());
        part.2.push(index);
    }
    let sent = parts.iter().map(|(_, part, _)| {
        let mut conn = conn.clone();
        async move { conn.req_packed_commands(part, 0, part.len()).await }
    });
    let replies = futures_util::future::join_all(sent).await;
    let mut ordered = vec![Value::Nil; pipeline.len()];
    for ((_, _, indices), reply) in parts.iter().zip(replies) {
        for (&index, value) in indices.iter().zip(reply?) {
            ordered[index] = value;
        }
    }
    Ok(ordered)
}

/// The slot of a command's first key, for the commands the backend pipelines: the key is the
/// first argument, but for scripts (`EVALSHA sha numkeys key …`) and stream reads (`…
/// STREAMS key … id …`). `None` for a command without a key.
fn slot_of(cmd: &Cmd) -> Option<Slot> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .filter_map(|arg| match arg {
            Arg::Simple(bytes) => Some(bytes),
            _ => None,
        })
        .collect();
    let name = args.first()?.to_ascii_uppercase();
    let key = match name.as_slice() {
        b"EVALSHA" | b"EVAL" | b"EVALSHA_RO" | b"EVAL_RO" => args.get(3),
        b"XREADGROUP" | b"XREAD" => {
            let at = args.iter().position(|a| a.eq_ignore_ascii_case(b"STREAMS"))?;
            args.get(at + 1)
        }
        b"MULTI" | b"EXEC" | b"SCRIPT" | b"PING" => None,
        _ => args.get(1),
    }?;
    Some(Slot::for_key(key))
}
