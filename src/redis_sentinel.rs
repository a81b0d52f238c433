//! A primary with two replicas behind three sentinels (quorum 2), for tests: `redis-server`
//! ×3 and `redis-server --sentinel` ×3 on free loopback ports, killed on drop. The data servers
//! run with `min-replicas-to-write 1`: a primary without a replica in sync refuses writes.

use std::time::{Duration, Instant};

use crate::redis_cluster::redis_cli;
use crate::{RedisCluster, RedisServer};

/// The name the sentinels monitor the primary by.
const MASTER_NAME: &str = RedisSentinel::MASTER_NAME;

/// A primary is taken for down after this long without an answer (30 s by default), so a
/// failover takes seconds.
const DOWN_AFTER_MS: u64 = 1000;

/// `min-replicas-max-lag`: a replica counts for `min-replicas-to-write` while its last
/// acknowledgement is at most this old (seconds; Redis's default).
const MAX_LAG_S: u64 = 10;

/// One primary, two replicas, three sentinels.
///
/// ```no_run
/// use std::time::Duration;
/// use retry_kafka_suite::RedisSentinel;
///
/// let mut setup = RedisSentinel::start();
/// let url = setup.url(); // redis+sentinel://127.0.0.1:…,…/rk-primary, for REDIS_URL
/// let old = setup.primary();
/// setup.kill(old);
/// let failover = setup.failover_from(old, Duration::from_secs(30));
/// assert_ne!(failover.primary, old);
/// ```
pub struct RedisSentinel {
    /// The data servers: the first primary, then its replicas (after a failover, one of them is
    /// the primary).
    pub servers: Vec<RedisServer>,
    /// The sentinels.
    pub sentinels: Vec<RedisServer>,
}

/// How a failover went, timed from the kill of the primary.
#[derive(Clone, Copy, Debug)]
pub struct Failover {
    /// The new primary's port.
    pub primary: u16,
    /// Until every sentinel still running named the new primary.
    pub promoted: Duration,
    /// Until the new primary took a write its replica acknowledged (`WAIT 1`;
    /// `min-replicas-to-write` refuses writes until a replica follows it).
    pub writable: Duration,
}

impl RedisSentinel {
    /// The name the sentinels monitor the primary by.
    pub const MASTER_NAME: &str = "rk-primary";

    /// Starts the servers and the sentinels and waits until the sentinels agree on the primary,
    /// know each other and both replicas, and both replicas acknowledge a write. Panics
    /// (naming the binary) when `redis-server` or `redis-cli` is missing.
    pub fn start() -> Self {
        let _ = redis_cli();
        let primary = data_server(None);
        let mut servers = vec![data_server(Some(primary.port))];
        servers.push(data_server(Some(primary.port)));
        servers.insert(0, primary);
        let sentinels = (0..3).map(|_| sentinel(servers[0].port)).collect();
        let setup = RedisSentinel { servers, sentinels };
        setup.wait_until_ready(Duration::from_secs(30));
        setup
    }

    /// `redis+sentinel://127.0.0.1:a,127.0.0.1:b,127.0.0.1:c/rk-primary`, for the backend.
    pub fn url(&self) -> String {
        let sentinels: Vec<String> = self
            .sentinels
            .iter()
            .map(|sentinel| format!("127.0.0.1:{}", sentinel.port))
            .collect();
        format!("redis+sentinel://{}/{MASTER_NAME}", sentinels.join(","))
    }

    /// The sentinels' addresses, `redis://127.0.0.1:port`.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|sentinel| format!("redis://127.0.0.1:{}", sentinel.port))
            .collect()
    }

    /// The port of the primary as the first sentinel still running names it.
    pub fn primary(&self) -> u16 {
        self.named_primaries()
            .into_iter()
            .flatten()
            .next()
            .expect("a sentinel that names the primary")
    }

    /// The primary each sentinel still running names (`None` from one that names none).
    fn named_primaries(&self) -> Vec<Option<u16>> {
        self.sentinels
            .iter()
            .filter(|sentinel| sentinel.child.is_some())
            .map(|sentinel| {
                let answer = Self::cli(
                    sentinel.port,
                    &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME],
                );
                answer.lines().nth(1).and_then(|port| port.trim().parse().ok())
            })
            .collect()
    }

    /// `redis-cli -p port args…`'s output (a data server's or a sentinel's), empty when it
    /// cannot connect.
    pub fn cli(port: u16, args: &[&str]) -> String {
        RedisCluster::cli(port, args)
    }

    /// Kills the data server on `port` (SIGKILL), as a crashed machine goes.
    pub fn kill(&mut self, port: u16) {
        self.servers
            .iter_mut()
            .find(|server| server.port == port)
            .expect("a data server on that port")
            .kill();
    }

    /// After the primary on `old` was killed: waits until the sentinels promoted a replica and
    /// the new primary takes writes again, timing both from now.
    pub fn failover_from(&self, old: u16, within: Duration) -> Failover {
        let start = Instant::now();
        let deadline = start + within;
        let primary = loop {
            let named = self.named_primaries();
            if let Some(Some(new)) = named.first() {
                if *new != old && named.iter().all(|port| port == &Some(*new)) {
                    break *new;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the sentinels promoted no replica within {within:?}: they name {named:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let promoted = start.elapsed();
        while !Self::replicated_write(primary, 1) {
            assert!(
                Instant::now() < deadline,
                "the new primary on {primary} took no write a replica acknowledged within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let writable = start.elapsed();
        self.wait_until_ready(deadline.saturating_duration_since(Instant::now()));
        Failover {
            primary,
            promoted,
            writable,
        }
    }

    /// Whether the primary on `port` takes a write and `replicas` replicas acknowledge it within
    /// a second (`WAIT`).
    fn replicated_write(port: u16, replicas: usize) -> bool {
        let answer = RedisCluster::cli_script(
            port,
            &format!("SET rk-replication-probe 1\nWAIT {replicas} 1000\n"),
        );
        let mut lines = answer.lines();
        lines.next() == Some("OK")
            && lines
                .next()
                .and_then(|n| n.trim().parse::<usize>().ok())
                .is_some_and(|n| n >= replicas)
    }

    /// Every sentinel still running names the same primary, is sure it is up, knows the other
    /// sentinels and every replica still running; the primary says so too, and a write to it is
    /// acknowledged by every replica (`WAIT`). A replica gets nothing until its primary has its
    /// first `REPLCONF ACK`, up to a second after a diskless first sync
    /// (`RedisCluster::replicas_streaming` tells the story): a test that kills the primary
    /// waits that out here.
    pub fn wait_until_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            match self.not_ready() {
                None => return,
                Some(why) => assert!(
                    Instant::now() < deadline,
                    "the Sentinel setup was not ready within {within:?}: {why}"
                ),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What is not ready yet, if anything.
    fn not_ready(&self) -> Option<String> {
        let named = self.named_primaries();
        let Some(Some(primary)) = named.first().copied() else {
            return Some(format!("the sentinels name {named:?}"));
        };
        if named.iter().any(|port| *port != Some(primary)) {
            return Some(format!("the sentinels name {named:?}"));
        }
        let live_sentinels = self.sentinels.iter().filter(|s| s.child.is_some()).count();
        let replicas = self
            .servers
            .iter()
            .filter(|server| server.child.is_some() && server.port != primary)
            .count();
        for sentinel in self.sentinels.iter().filter(|s| s.child.is_some()) {
            let master = pairs(&Self::cli(sentinel.port, &["SENTINEL", "MASTER", MASTER_NAME]));
            let field = |name: &str| master.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
            if field("flags") != Some("master") {
                return Some(format!(
                    "sentinel {} sees the primary as {:?}",
                    sentinel.port,
                    field("flags")
                ));
            }
            if field("num-other-sentinels") != Some(&(live_sentinels - 1).to_string()) {
                return Some(format!(
                    "sentinel {} knows {:?} others",
                    sentinel.port,
                    field("num-other-sentinels")
                ));
            }
            let known = pairs(&Self::cli(sentinel.port, &["SENTINEL", "REPLICAS", MASTER_NAME]))
                .iter()
                .filter(|(k, v)| k == "flags" && v == "slave")
                .count();
            if known != replicas {
                return Some(format!(
                    "sentinel {} knows {known} replicas up of {replicas}",
                    sentinel.port
                ));
            }
        }
        let info = Self::cli(primary, &["INFO", "replication"]);
        if !info.contains("role:master") || !info.contains(&format!("connected_slaves:{replicas}")) {
            return Some(format!("the primary on {primary} says {info}"));
        }
        (!Self::replicated_write(primary, replicas))
            .then(|| format!("the probe write on {primary} was not acknowledged by {replicas} replicas"))
    }
}

/// A data server: the primary (`replica_of` none) or a replica of the server on that port.
fn data_server(replica_of: Option<u16>) -> RedisServer {
    RedisServer::launched_on_free_ports(|[port, _]| {
        let mut options: Vec<String> = [
            // A replica's first sync at once, not after the default 5 s wait for more.
            "--repl-diskless-sync-delay",
            "0",
            "--min-replicas-to-write",
            "1",
            "--min-replicas-max-lag",
            &MAX_LAG_S.to_string(),
        ]
        .map(str::to_owned)
        .to_vec();
        if let Some(primary) = replica_of {
            options.extend(["--replicaof".into(), "127.0.0.1".into(), primary.to_string()]);
        }
        let mut server = RedisServer::unlaunched(port);
        server.options = options;
        server
    })
}

/// A sentinel of the primary on `primary`, quorum 2.
fn sentinel(primary: u16) -> RedisServer {
    let config = format!(
        "sentinel monitor {MASTER_NAME} 127.0.0.1 {primary} 2\n\
         sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n\
         sentinel failover-timeout {MASTER_NAME} 5000\n\
         sentinel parallel-syncs {MASTER_NAME} 2\n"
    );
    RedisServer::launched_on_free_ports(|[port, _]| {
        let mut server = RedisServer::unlaunched(port);
        server.sentinel = Some(config.clone());
        server
    })
}

/// A reply of field-value pairs (nested arrays flattened, as redis-cli prints them) as pairs.
fn pairs(reply: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = reply.lines().collect();
    lines
        .chunks(2)
        .filter(|pair| pair.len() == 2)
        .map(|pair| (pair[0].to_owned(), pair[1].to_owned()))
        .collect()
}
