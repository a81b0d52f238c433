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

/// Whether the server did not know a script (`NOSCRIPT`), alone or among the errors of a
/// pipeline.
pub(crate) fn is_missing(error: &RedisError) -> bool {
    super::error::has_code(error, "NOSCRIPT")
}

/// Sends every script to the server (`SCRIPT LOAD`), in one round trip.
pub(crate) async fn load(conn: &mut impl ConnectionLike) -> RedisResult<()> {
    redis::pipe()
        .load_script(&MOVE_DUE)
        .ignore()
        .load_script(&ACQUIRE)
        .ignore()
        .load_script(&RELEASE)
        .ignore()
        .query_async(conn)
        .await
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
