//! Lua scripts; each runs atomically on the server.
//!
//! The server keeps a script once loaded and runs it by its SHA1 (`EVALSHA`), so the text goes
//! over the wire only when the server does not know it yet: after it started, or after a
//! `SCRIPT FLUSH`. Scripts run in pipelines, where the `redis` crate does not load a missing
//! script by itself: [`query`] does, and [`is_missing`] tells a pipeline's caller.

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{FromRedisValue, Pipeline, RedisError, RedisResult, Script};

/// Moves every due entry of a delay set to its stream; see [`MOVE_DUE_LUA`].
pub(crate) static MOVE_DUE: LazyLock<Script> = LazyLock::new(|| Script::new(MOVE_DUE_LUA));
/// Takes or renews a partition's lease; see [`ACQUIRE_LUA`].
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(ACQUIRE_LUA));
/// Gives a partition's lease up; see [`RELEASE_LUA`].
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE_LUA));
/// On a cluster, writes a hand-off's next hop once per source; see [`HAND_OFF_ONCE_LUA`].
pub(crate) static HAND_OFF_ONCE: LazyLock<Script> = LazyLock::new(|| Script::new(HAND_OFF_ONCE_LUA));
/// Reads what a group has not acknowledged, delay set included; see [`UNSETTLED_LUA`].
pub(crate) static UNSETTLED: LazyLock<Script> = LazyLock::new(|| Script::new(UNSETTLED_LUA));

/// Whether the server did not know a script (`NOSCRIPT`), alone or among the errors of a
/// pipeline.
pub(crate) fn is_missing(error: &RedisError) -> bool {
    super::error::has_code(error, "NOSCRIPT")
}

/// Sends every script to the server (`SCRIPT LOAD`), one command each: a cluster client sends
/// each to every node, where a pipeline of them would reach one.
pub(crate) async fn load(conn: &mut impl ConnectionLike) -> RedisResult<()> {
    for code in [
        MOVE_DUE_LUA,
        ACQUIRE_LUA,
        RELEASE_LUA,
        HAND_OFF_ONCE_LUA,
        UNSETTLED_LUA,
    ] {
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(code)
            .exec_async(conn)
            .await?;
    }
    Ok(())
}

/// Runs `pipe`, whose commands may all run twice (script invocations and the like); when the
/// server did not know a script, loads them and runs it once more.
pub(crate) async fn query<T: FromRedisValue>(
    pipe: &Pipeline,
    conn: &mut impl ConnectionLike,
) -> RedisResult<T> {
    match pipe.query_async(conn).await {
        Err(error) if is_missing(&error) => {
            load(conn).await?;
            pipe.query_async(conn).await
        }
        result => result,
    }
}

/// KEYS: delay set. ARGV: now (epoch ms), most entries to move.
/// Moves every due entry to its stream and removes it from the set. Returns the number
/// moved and the due time of the next waiting entry (-1 when none waits).
const MOVE_DUE_LUA: &str = r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local entry = {cmsgpack.unpack(member)}
  redis.call('XADD', entry[1], '*', unpack(entry, 3))
  redis.call('ZREM', KEYS[1], member)
end
local next = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if next[2] then return {#due, tonumber(next[2])} end
return {#due, -1}
"#;

/// KEYS: lease. ARGV: member, ttl ms. Takes or renews the lease; 1 if this member holds it.
const ACQUIRE_LUA: &str = r#"
local owner = redis.call('GET', KEYS[1])
if (not owner) or owner == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"#;

/// KEYS: lease. ARGV: member. Gives the lease up if this member holds it.
const RELEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// KEYS: the hand-off's mark, the next hop's stream or delay set (one slot: `keys.rs`).
/// ARGV: the mark's lifetime (ms), then `x` and the entry's fields (XADD), or `z`, the due
/// time and the member (ZADD).
/// Writes the next hop and the mark, holding its stream ID (`0-0` in a delay set), unless the
/// mark is there: then the hop was written by an earlier try whose source was not
/// acknowledged, and nothing is written again. Returns the stream ID either way.
const HAND_OFF_ONCE_LUA: &str = r#"
local written = redis.call('GET', KEYS[1])
if written then return written end
local id = '0-0'
if ARGV[2] == 'z' then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
else
  id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
end
redis.call('SET', KEYS[1], id, 'PX', ARGV[1])
return id
"#;

/// KEYS: a delay set when ARGV[3] is `1`, then streams (one slot: `keys.rs`). ARGV: the group,
/// the most pending entries read per stream, whether KEYS[1] is a delay set.
/// Returns the delay set's members (none without one), then per stream the entries the group
/// left pending and those it never read, in ID order: read at one instant, so a due entry's
/// move from the set to its stream is seen once (`unsettled.rs`).
const UNSETTLED_LUA: &str = r#"
local first, waiting = 1, {}
if ARGV[3] == '1' then
  waiting = redis.call('ZRANGE', KEYS[1], 0, -1)
  first = 2
end
local out = {waiting}
for i = first, #KEYS do
  local stream, entries = KEYS[i], {}
  if redis.call('EXISTS', stream) == 1 then
    local last = nil
    for _, group in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
      local name, delivered
      for j = 1, #group, 2 do
        if group[j] == 'name' then name = group[j + 1] end
        if group[j] == 'last-delivered-id' then delivered = group[j + 1] end
      end
      if name == ARGV[1] then last = delivered end
    end
    if last then
      for _, p in ipairs(redis.call('XPENDING', stream, ARGV[1], '-', '+', tonumber(ARGV[2]))) do
        local entry = redis.call('XRANGE', stream, p[1], p[1])
        if entry[1] then table.insert(entries, entry[1]) end
      end
    else
      last = '0-0'
    end
    for _, entry in ipairs(redis.call('XRANGE', stream, '(' .. last, '+')) do
      table.insert(entries, entry)
    end
  end
  table.insert(out, entries)
end
return out
"#;
