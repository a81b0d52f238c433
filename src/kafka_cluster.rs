//! A three-node Apache Kafka cluster for the broker-failure tests: each node a KRaft broker and
//! controller in one JVM, replication factor 3 and `min.insync.replicas=2` by default, with
//! nodes that can be killed (SIGKILL), stopped (SIGTERM) and restarted on their own data.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::{
    broker_java, free_ports, random_cluster_id, remove_directories_of_killed_processes,
    spawn_dying_with_this_process, ApacheKafka,
};

/// Lists the cluster's transactions and their coordinators (Java's single-file launch).
const COORDINATORS_JAVA: &str = r#"
import java.util.*;
import org.apache.kafka.clients.admin.*;

public class Coordinators {
    public static void main(String[] args) throws Exception {
        Properties properties = new Properties();
        properties.put("bootstrap.servers", args[0]);
        try (Admin admin = Admin.create(properties)) {
            List<String> ids = new ArrayList<>();
            for (TransactionListing listing : admin.listTransactions().all().get()) {
                ids.add(listing.transactionalId());
            }
            for (Map.Entry<String, TransactionDescription> entry : admin.describeTransactions(ids).all().get().entrySet()) {
                System.out.println("transaction " + entry.getKey() + " " + entry.getValue().coordinatorId());
            }
        }
    }
}
"#;

/// How the cluster's temporary directory begins; `<port>-<pid>` follows.
const CLUSTER_DIRECTORY: &str = "retry-kafka-cluster-";

/// Three Apache Kafka nodes on free loopback ports, their data in a fresh temporary directory
/// (removed on drop unless `RK_KEEP_BROKER_LOG` is set). Every JVM is killed on drop, and dies
/// with the test process if that is killed first.
///
/// Failure detection is tuned down for tests (the broker's session 3 s instead of 9 s), so a
/// killed leader is replaced within seconds, as on a cluster with fast heartbeats.
pub struct KafkaCluster {
    nodes: Vec<Node>,
    /// All three nodes' listeners, as a client's `bootstrap.servers`.
    pub bootstrap: String,
    /// From the start of [`KafkaCluster::start`] until every node answered with all three.
    pub startup: Duration,
    dir: PathBuf,
}

struct Node {
    id: u32,
    port: u16,
    config: PathBuf,
    logs: PathBuf,
    child: Option<Child>,
}

impl KafkaCluster {
    /// Formats the storage of a new three-node cluster, starts the nodes and waits until each
    /// one lists all three brokers (120 s at most).
    pub fn start() -> Self {
        let started = Instant::now();
        let ports: [u16; 6] = free_ports();
        let (listeners, controllers) = ports.split_at(3);
        remove_directories_of_killed_processes(CLUSTER_DIRECTORY);
        let dir = std::env::temp_dir().join(format!(
            "{CLUSTER_DIRECTORY}{}-{}",
            listeners[0],
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let voters = (0..3)
            .map(|i| format!("{}@127.0.0.1:{}", i + 1, controllers[i]))
            .collect::<Vec<_>>()
            .join(",");
        let cluster_id = random_cluster_id();
        let mut nodes = Vec::new();
        for index in 0..3 {
            let id = index as u32 + 1;
            let logs = dir.join(format!("node-{id}"));
            std::fs::create_dir_all(&logs).expect("node directory");
            let config = logs.join("server.properties");
            std::fs::write(
                &config,
                format!(
                    "process.roles=broker,controller\n\
                     node.id={id}\n\
                     controller.quorum.voters={voters}\n\
                     listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
                     advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
                     listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
                     inter.broker.listener.name=PLAINTEXT\n\
                     controller.listener.names=CONTROLLER\n\
                     log.dirs={data}\n\
                     default.replication.factor=3\n\
                     min.insync.replicas=2\n\
                     offsets.topic.replication.factor=3\n\
                     transaction.state.log.replication.factor=3\n\
                     transaction.state.log.min.isr=2\n\
                     share.coordinator.state.topic.replication.factor=3\n\
                     share.coordinator.state.topic.min.isr=2\n\
                     broker.heartbeat.interval.ms=500\n\
                     broker.session.timeout.ms=3000\n\
                     group.initial.rebalance.delay.ms=0\n\
                     num.partitions=1\n\
                     num.network.threads=2\n\
                     num.io.threads=2\n\
                     auto.create.topics.enable=false\n",
                    port = listeners[index],
                    controller = controllers[index],
                    data = logs.join("data").display(),
                ),
            )
            .expect("node configuration");
            let node = Node {
                id,
                port: listeners[index],
                config,
                logs,
                child: None,
            };
            let format = node
                .java_command()
                .args(["kafka.tools.StorageTool", "format", "--cluster-id", &cluster_id])
                .arg("--config")
                .arg(&node.config)
                .output()
                .expect("run the storage format tool (Java 17+)");
            assert!(
                format.status.success(),
                "formatting node {id}'s storage failed ({}): {}{}",
                format.status,
                String::from_utf8_lossy(&format.stdout),
                String::from_utf8_lossy(&format.stderr)
            );
            nodes.push(node);
        }
        let bootstrap = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = KafkaCluster {
            nodes,
            bootstrap,
            startup: Duration::ZERO,
            dir,
        };
        for node in &mut cluster.nodes {
            node.spawn();
        }
        let deadline = started + Duration::from_secs(120);
        for id in 1..=3 {
            cluster.wait_until_serving(id, deadline);
        }
        cluster.startup = started.elapsed();
        cluster
    }

    /// The ids of the nodes: 1, 2 and 3.
    pub fn nodes(&self) -> impl Iterator<Item = u32> + '_ {
        self.nodes.iter().map(|node| node.id)
    }

    /// Kills node `id`'s JVM with SIGKILL: no controlled shutdown, nothing flushed.
    pub fn kill_9(&mut self, id: u32) {
        let node = self.node(id);
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops node `id` with SIGTERM, as an operator's rolling restart does: the broker hands
    /// its leaderships over (controlled shutdown) and exits. Waits for the exit (60 s at most,
    /// then SIGKILL).
    pub fn stop(&mut self, id: u32) {
        let node = self.node(id);
        let Some(mut child) = node.child.take() else {
            return;
        };
        // SAFETY: kill(2) on our own child's pid, which has not been waited for yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.wait();
    }

    /// Starts node `id` again on its own data and ports, and waits until it serves metadata
    /// that lists all three nodes (120 s at most).
    pub fn restart(&mut self, id: u32) {
        let node = self.node(id);
        assert!(node.child.is_none(), "node {id} is still running");
        node.spawn();
        self.wait_until_serving(id, Instant::now() + Duration::from_secs(120));
    }

    /// Starts every stopped node at once (a cluster whose nodes are all down needs a quorum of
    /// controllers before any broker serves) and waits until each one serves.
    pub fn restart_all(&mut self) {
        for node in &mut self.nodes {
            if node.child.is_none() {
                node.spawn();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        for id in 1..=3 {
            self.wait_until_serving(id, deadline);
        }
    }

    /// The node leading `partition` of `topic`, as the cluster's metadata says now; `None`
    /// while it has no leader (or the topic does not exist).
    pub fn leader_of(&self, topic: &str, partition: u32) -> Option<u32> {
        let client = self.client();
        let metadata = client.fetch_metadata(Some(topic), Duration::from_secs(10)).ok()?;
        let leader = metadata
            .topics()
            .first()?
            .partitions()
            .iter()
            .find(|p| p.id() == partition as i32)?
            .leader();
        (leader > 0).then_some(leader as u32)
    }

    /// Every open or recent transaction's id and the node coordinating it, as the cluster's
    /// Admin API says now (`listTransactions`, `describeTransactions`: librdkafka has neither,
    /// so a Java program of a few lines asks, with the cluster's own `kafka-clients` jar).
    pub fn transaction_coordinators(&self) -> Vec<(String, u32)> {
        let source = self.dir.join("Coordinators.java");
        std::fs::write(&source, COORDINATORS_JAVA).expect("write Coordinators.java");
        let output = broker_java(&ApacheKafka::java(), &ApacheKafka::libs(), &self.dir)
            .arg(&source)
            .arg(&self.bootstrap)
            .output()
            .expect("run java (17+) on Coordinators.java");
        assert!(
            output.status.success(),
            "listing the cluster's transactions failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| {
                let (id, node) = line.strip_prefix("transaction ")?.rsplit_once(' ')?;
                Some((id.to_owned(), node.parse().ok()?))
            })
            .collect()
    }

    /// The in-sync replicas of `partition` of `topic`, as the cluster's metadata says now.
    pub fn in_sync_replicas(&self, topic: &str, partition: u32) -> Vec<u32> {
        let client = self.client();
        let Ok(metadata) = client.fetch_metadata(Some(topic), Duration::from_secs(10)) else {
            return Vec::new();
        };
        metadata
            .topics()
            .first()
            .and_then(|t| t.partitions().iter().find(|p| p.id() == partition as i32))
            .map(|p| p.isr().iter().map(|&id| id as u32).collect())
            .unwrap_or_default()
    }

    /// Node `id`'s log (WARN and up, and `kafka.server` at INFO).
    pub fn log(&self, id: u32) -> PathBuf {
        self.nodes[id as usize - 1].logs.join("server.log")
    }

    fn node(&mut self, id: u32) -> &mut Node {
        assert!(
            (1..=3).contains(&id),
            "the cluster's nodes are 1, 2 and 3, not {id}"
        );
        &mut self.nodes[id as usize - 1]
    }

    fn client(&self) -> BaseConsumer {
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("log_level", "3")
            .create()
            .expect("metadata client")
    }

    /// Waits for node `id`'s port, then for metadata from that node that lists all three.
    fn wait_until_serving(&mut self, id: u32, deadline: Instant) {
        let port = self.node(id).port;
        let mut client: Option<BaseConsumer> = None;
        loop {
            let node = self.node(id);
            if let Some(Ok(Some(status))) = node.child.as_mut().map(Child::try_wait) {
                panic!("Apache Kafka node {id} exited with {status}; {}", node.log_tail());
            }
            if Instant::now() > deadline {
                panic!(
                    "Apache Kafka node {id} did not serve metadata with all three nodes in time; {}",
                    node.log_tail()
                );
            }
            if client.is_some() || TcpStream::connect(("127.0.0.1", port)).is_ok() {
                let client = client.get_or_insert_with(|| {
                    rdkafka::ClientConfig::new()
                        .set("bootstrap.servers", format!("127.0.0.1:{port}"))
                        .set("log_level", "3")
                        .create()
                        .expect("metadata client")
                });
                let serving = client
                    .fetch_metadata(None, Duration::from_secs(1))
                    .is_ok_and(|metadata| metadata.brokers().len() == 3);
                if serving {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Node {
    fn java_command(&self) -> Command {
        broker_java(&ApacheKafka::java(), &ApacheKafka::libs(), &self.logs)
    }

    fn spawn(&mut self) {
        let output = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join("stdout.log"))
            .expect("node output file");
        let mut command = self.java_command();
        command
            .arg("kafka.Kafka")
            .arg(&self.config)
            .stdout(Stdio::from(output.try_clone().unwrap()))
            .stderr(Stdio::from(output));
        let child = spawn_dying_with_this_process(command).expect("start the Apache Kafka node (Java 17+)");
        self.child = Some(child);
    }

    fn log_tail(&self) -> String {
        let tail = |name: &str| {
            let text = std::fs::read_to_string(self.logs.join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        format!(
            "log {}:\n{}\nJVM output:\n{}",
            self.logs.join("server.log").display(),
            tail("server.log"),
            tail("stdout.log")
        )
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::env::var_os("RK_KEEP_BROKER_LOG").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("the Kafka cluster's directory kept: {}", self.dir.display());
        }
    }
}
