//! A Redis Cluster for tests: three masters and three replicas (`redis-server
//! --cluster-enabled yes` ×6 on free loopback ports, joined by `redis-cli --cluster create`),
//! killed on drop.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::RedisServer;

/// Three masters, each with one replica, covering the 16384 slots.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts six nodes, creates the cluster and waits until every node says `cluster_state:ok`
    /// and every replica is attached. Panics (naming the command) when redis-cli is missing.
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..6).map(|_| RedisServer::start_cluster_node()).collect();
        let cluster = RedisCluster { nodes };
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new(redis_cli())
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        cluster.wait_until_ok(Duration::from_secs(30));
        cluster
    }

    /// The nodes' URLs, `redis://127.0.0.1:port`, for `Redis::cluster_builder`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| format!("redis://127.0.0.1:{}", node.port))
            .collect()
    }

    /// `redis-cli -p port args…`'s output (panics if it fails to run).
    pub fn cli(port: u16, args: &[&str]) -> String {
        let output = Command::new(redis_cli())
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `redis-cli -p port` running the commands of `script` (one per line) on one connection,
    /// its output (panics if it fails to run).
    pub(crate) fn cli_script(port: u16, script: &str) -> String {
        use std::io::Write as _;
        let mut child = Command::new(redis_cli())
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run redis-cli");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("write to redis-cli");
        let output = child.wait_with_output().expect("run redis-cli");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The ports of the masters that serve slots (as a live node sees them), each with its
    /// slot ranges.
    pub fn masters(&self) -> Vec<(u16, Vec<(u16, u16)>)> {
        let mut masters = Vec::new();
        for line in self.node_lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let port = fields[1]
                .split(['@', ':'])
                .nth(1)
                .and_then(|p| p.parse().ok())
                .expect("a node's port");
            let slots = fields[8..]
                .iter()
                .filter(|range| !range.starts_with('['))
                .filter_map(|range| match range.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => range.parse().ok().map(|slot| (slot, slot)),
                })
                .collect();
            masters.push((port, slots));
        }
        masters.sort();
        masters
    }

    /// `cluster nodes` as a live node answers it, a line per node.
    fn node_lines(&self) -> Vec<String> {
        let live = self
            .nodes
            .iter()
            .find(|node| node.child.is_some())
            .expect("a live node");
        Self::cli(live.port, &["cluster", "nodes"])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Every node still running says the cluster is ok with every slot covered; three masters
    /// serve the slots (after a failover, a promoted replica among them) and every other live
    /// node is a replica in sync with its master.
    pub fn wait_until_ok(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let live = self.nodes.iter().filter(|node| node.child.is_some());
            // A replica that never synced with its master refuses to replace it (its data is
            // too old: `cluster-replica-validity-factor`), so replicas must be in sync too.
            let ok = live.clone().all(|node| {
                let info = Self::cli(node.port, &["cluster", "info"]);
                let replication = Self::cli(node.port, &["info", "replication"]);
                info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && (replication.contains("role:master") || replication.contains("master_link_status:up"))
            });
            let replicas = self
                .node_lines()
                .iter()
                .filter(|line| line.contains("slave") && !line.contains("fail"))
                .count();
            if ok
                && self.masters().len() == 3
                && replicas == live.count() - 3
                && self.replicas_streaming(deadline.saturating_duration_since(Instant::now()))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster was not ok within {within:?}; cluster nodes:\n{}",
                self.node_lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every master with a replica has its replica acknowledge a write made now. A replica
    /// that says `master_link_status:up` after a diskless first sync gets nothing until its
    /// master has its first `REPLCONF ACK` (sent once a second): a master killed in that window
    /// takes every write since the sync with it (session 14 found the master-kill test losing
    /// its retries that way), as any Redis does; a test that kills a master waits it out.
    fn replicas_streaming(&self, within: Duration) -> bool {
        let timeout = within.as_millis().max(1).to_string();
        self.masters().iter().all(|(port, slots)| {
            let info = Self::cli(*port, &["info", "replication"]);
            if info.contains("connected_slaves:0") {
                return true;
            }
            // A key of this master's slots, then WAIT on the same connection (WAIT counts the
            // replicas that acknowledged this connection's last write).
            let probes: Vec<String> = (0..64).map(|n| format!("rk-replication-probe-{n}")).collect();
            let script: String = probes
                .iter()
                .map(|key| format!("CLUSTER KEYSLOT {key}\n"))
                .collect();
            let slots_of_probes = Self::cli_script(*port, &script);
            let key = probes
                .iter()
                .zip(slots_of_probes.lines())
                .find(|(_, slot)| {
                    let slot: u16 = slot.trim().parse().expect("CLUSTER KEYSLOT's answer");
                    slots.iter().any(|(from, to)| (*from..=*to).contains(&slot))
                })
                .map(|(key, _)| key)
                .expect("a probe key in the master's slots");
            let answer = Self::cli_script(*port, &format!("SET {key} 1\nWAIT 1 {timeout}\nDEL {key}\n"));
            let mut lines = answer.lines();
            lines.next() == Some("OK")
                && lines
                    .next()
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .is_some_and(|n| n >= 1)
        })
    }

    /// Kills the node on `port` (SIGKILL).
    pub fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|node| node.port == port)
            .expect("a node on that port");
        node.kill();
    }
}

/// `redis-cli`, beside `redis-server` (Debian's redis-tools, which redis-server depends on).
pub(crate) fn redis_cli() -> PathBuf {
    let cli = RedisServer::binary().with_file_name("redis-cli");
    assert!(
        cli.is_file(),
        "redis-cli is not installed at {}: run ./scripts/test.sh (or ./scripts/install-test-deps.sh)",
        cli.display()
    );
    cli
}
