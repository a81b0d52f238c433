//! Examples and integration tests for retry-kafka, and what they share: real broker and server
//! processes (Apache Kafka, redis-server) for tests and benchmarks.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

mod kafka_acls;
pub use kafka_acls::TopicAcl;
mod kafka_cluster;
pub use kafka_cluster::KafkaCluster;
mod postgres_server;
mod redis_cluster;
mod redis_sentinel;
pub use postgres_server::{PostgresServer, ServerTls};
pub use redis_cluster::RedisCluster;
pub use redis_sentinel::{Failover, RedisSentinel};

/// CPU time this process has used so far, all threads (`CLOCK_PROCESS_CPUTIME_ID`): what the
/// benchmarks divide by messages, steadier than wall time on a shared machine.
pub fn process_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec; the clock exists on every Linux.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    assert_eq!(status, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID) failed");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// CPU time (user and system) that process `pid` has used so far, from `/proc/<pid>/stat`: in
/// the kernel's clock ticks (10 ms on most Linux systems), so coarse over short runs.
pub fn cpu_time_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("reading /proc/<pid>/stat");
    // The fields after the command name, which is in parentheses and may hold spaces: the
    // state is field 3, utime and stime fields 14 and 15.
    let rest = &stat[stat.rfind(')').expect("a /proc/<pid>/stat line") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| fields[index].parse::<u64>().expect("a tick count");
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_nanos((ticks(11) + ticks(12)) * 1_000_000_000 / per_second)
}

/// Starts a new peak of this process's resident memory: the kernel's high-water mark is set back
/// to the current RSS (Linux: `5` into `/proc/self/clear_refs`). Returns that RSS, MiB: what the
/// process holds already (glibc keeps what earlier work freed), the floor of the next peak.
pub fn reset_peak_rss() -> f64 {
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting the peak RSS (/proc/self/clear_refs)");
    memory_status_mib("VmRSS:")
}

/// The peak resident memory of this process since [`reset_peak_rss`], MiB (`VmHWM`).
pub fn peak_rss_mib() -> f64 {
    memory_status_mib("VmHWM:")
}

/// A `kB` figure of `/proc/self/status`, MiB.
fn memory_status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"));
    kib / 1024.0
}

/// The settings of a benchmark's hand-written rdkafka consumer (the floor every ratio is
/// taken against): retry-kafka's main-topic consumer's, offsets stored by hand.
pub fn raw_consumer_config(bootstrap: &str, group: &str) -> rdkafka::ClientConfig {
    let mut config = rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // As retry-kafka sets it: with librdkafka's default (1 s) a full local queue stalls
        // fetching, and a raw loop drops to ~175k msg/s in some rounds.
        .set("fetch.queue.backoff.ms", "10");
    config
}

/// The Kafka broker a benchmark runs on: the cluster `KAFKA_BROKERS` names, or else Apache Kafka
/// with a JVM sized as deployed (`RK_KAFKA_JVM_OPTS` overrides it). Stopped on drop.
///
/// `KAFKA_BROKERS=embedded` runs librdkafka's mock cluster inside the benchmark's process
/// instead (the throughput and failures benches): no JVM and no second process, for counting
/// instructions per record under `valgrind --tool=callgrind`; its rates say nothing about a
/// real broker's. Its topics are made through [`BenchKafka::backend`] (the mock cluster
/// answers no CreateTopics request).
pub struct BenchKafka {
    _broker: Option<ApacheKafka>,
    embedded: Option<std::sync::Arc<retry_kafka::backend::kafka::EmbeddedKafka>>,
    /// Its bootstrap servers.
    pub bootstrap: String,
    /// What it is, for the printed figures.
    pub description: String,
}

impl BenchKafka {
    pub fn start() -> Self {
        match std::env::var("KAFKA_BROKERS").as_deref() {
            Ok("embedded") => {
                let embedded = retry_kafka::backend::kafka::EmbeddedKafka::start(1)
                    .expect("starting librdkafka's mock cluster");
                return BenchKafka {
                    bootstrap: embedded.bootstrap_servers().to_owned(),
                    description: "librdkafka's mock cluster, in this process".into(),
                    _broker: None,
                    embedded: Some(std::sync::Arc::new(embedded)),
                };
            }
            Ok(bootstrap) => {
                return BenchKafka {
                    _broker: None,
                    embedded: None,
                    description: format!("the cluster at {bootstrap}"),
                    bootstrap: bootstrap.to_owned(),
                };
            }
            Err(_) => {}
        }
        if std::env::var_os("RK_KAFKA_JVM_OPTS").is_none() {
            // A broker as deployed, not the tests' quick-start JVM.
            std::env::set_var("RK_KAFKA_JVM_OPTS", "-Xms1g -Xmx1g -XX:+UseG1GC");
        }
        let kafka = ApacheKafka::start();
        BenchKafka {
            bootstrap: kafka.bootstrap.clone(),
            description: format!("Apache Kafka {APACHE_KAFKA_VERSION} (KRaft, one broker, 1 GiB heap)"),
            _broker: Some(kafka),
            embedded: None,
        }
    }

    /// The process of the Apache Kafka broker it started, if it did.
    pub fn broker_pid(&self) -> Option<u32> {
        self._broker.as_ref().map(ApacheKafka::pid)
    }

    /// Whether it is the mock cluster in this process (fresh: no group has committed anything).
    pub fn is_embedded(&self) -> bool {
        self.embedded.is_some()
    }

    /// Writes `count` records to `topic` as a benchmark's input: record `i` is `make(i)`'s
    /// (key, payload), partitioned by key as Java clients do (murmur2); waits until all are
    /// acknowledged.
    pub fn produce(&self, topic: &str, count: u64, mut make: impl FnMut(u64) -> (String, Vec<u8>)) {
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
        let producer: BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("linger.ms", "20")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "1000000")
            .set("partitioner", "murmur2_random")
            .create()
            .expect("a producer for the benchmark's input");
        for i in 0..count {
            let (key, payload) = make(i);
            while producer
                .send(BaseRecord::to(topic).key(&key).payload(&payload))
                .is_err()
            {
                producer.poll(Duration::from_millis(10));
            }
        }
        producer
            .flush(Duration::from_secs(60))
            .expect("the benchmark's input acknowledged");
    }

    /// Makes the next round of `group` read `topic`'s `partitions` from the start: commits
    /// offset 0 for each (the group must have no member). A fresh broker may not have loaded
    /// the group's coordinator yet: tries for up to 10 s.
    pub async fn rewind(&self, group: &str, topic: &str, partitions: u32) {
        use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", group)
            .create()
            .expect("a consumer to rewind the benchmark's group");
        let mut list = rdkafka::TopicPartitionList::new();
        for partition in 0..partitions as i32 {
            list.add_partition_offset(topic, partition, rdkafka::Offset::Offset(0))
                .expect("a partition list");
        }
        let mut tries = 0;
        while let Err(error) = consumer.commit(&list, CommitMode::Sync) {
            tries += 1;
            assert!(tries < 100, "rewinding group {group}: {error}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The backend on it: on the mock cluster, one that makes topics there.
    pub fn backend(&self) -> retry_kafka::backend::kafka::Kafka {
        match &self.embedded {
            Some(embedded) => retry_kafka::backend::kafka::Kafka::on_embedded(embedded.clone()),
            None => retry_kafka::backend::kafka::Kafka::builder(self.bootstrap.clone()).build(),
        }
        .expect("a Kafka backend on the benchmark's broker")
    }
}

/// The Redis server a benchmark runs on: the one `REDIS_URL` names, or a `redis-server` started
/// for it (stopped on drop).
pub struct BenchRedis {
    _server: Option<RedisServer>,
    /// Its URL.
    pub url: String,
}

impl BenchRedis {
    pub fn start() -> Self {
        match std::env::var("REDIS_URL") {
            Ok(url) => BenchRedis { _server: None, url },
            Err(_) => {
                let server = RedisServer::start();
                BenchRedis {
                    url: server.url(),
                    _server: Some(server),
                }
            }
        }
    }
}

/// What the benchmarks share to read settings and report rounds.
pub mod figures {
    /// The number in environment variable `name`, or `default`.
    pub fn env_or(name: &str, default: u64) -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// The median of `values` (the upper one of an even count).
    pub fn median(values: &[f64]) -> f64 {
        let mut values = values.to_vec();
        values.sort_by(|a, b| a.partial_cmp(b).unwrap());
        values[values.len() / 2]
    }

    /// `min–max` of `values`, two decimals.
    pub fn spread(values: &[f64]) -> String {
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{min:.2}–{max:.2}")
    }
}

/// The role of a topic named by the default [`TopicNaming`](retry_kafka::app::TopicNaming)
/// (`{topic}.{group}.retry.{level}`, `{topic}.{group}.dlq`, `{topic}.{group}.parked`), for
/// test harnesses that are given only a topic's name.
pub fn role_of(topic: &str) -> retry_kafka::backend::TopicRole {
    use retry_kafka::backend::TopicRole;
    if topic.ends_with(".dlq") {
        return TopicRole::DeadLetter;
    }
    if topic.ends_with(".parked") {
        return TopicRole::Parked;
    }
    match topic.rsplit_once(".retry.").map(|(_, level)| level.parse()) {
        Some(Ok(level)) => TopicRole::Retry { level },
        _ => TopicRole::Main,
    }
}

/// `N` distinct free loopback ports (all held at once while they are picked, so they differ).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: [TcpListener; N] =
        std::array::from_fn(|_| TcpListener::bind("127.0.0.1:0").expect("a free loopback port"));
    listeners.map(|listener| listener.local_addr().expect("a bound address").port())
}

/// Spawns `command` so that the kernel SIGKILLs the child when this process ends, however it
/// ends (a failed test, SIGKILL, a CI timeout), with `PR_SET_PDEATHSIG`: every server and
/// worker process the tests start (Apache Kafka, `redis-server`, `postgres` and `initdb`,
/// `rk-worker`) is spawned here. The kernel sends that signal when the *thread* that spawned
/// the child exits, so every such child is spawned by one thread that lives as long as the
/// process, not by a test's or a blocking pool's thread. The signal is armed after the
/// command's `uid`/`gid` take effect (a change of credentials would clear it), so a child that
/// runs as another user keeps it.
///
/// ```no_run
/// let mut sleep = std::process::Command::new("sleep");
/// sleep.arg("60");
/// let mut child = retry_kafka_suite::spawn_dying_with_this_process(sleep)?;
/// child.kill()?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn spawn_dying_with_this_process(command: Command) -> io::Result<Child> {
    type Request = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<mpsc::Sender<Request>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, received) = mpsc::channel::<Request>();
        // Its loop never ends: the static sender is never dropped.
        std::thread::Builder::new()
            .name("child-spawner".into())
            .spawn(move || {
                for (mut command, reply) in received {
                    let _ = reply.send(spawn_with_parent_death_signal(&mut command));
                }
            })
            .expect("the child-spawner thread");
        requests
    });
    let (reply, answer) = mpsc::channel();
    spawner
        .send((command, reply))
        .expect("the child-spawner thread runs");
    answer.recv().expect("the child-spawner thread answers")
}

fn spawn_with_parent_death_signal(command: &mut Command) -> io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec; it calls only async-signal-safe
    // functions (prctl, getppid) and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(io::Error::last_os_error());
            }
            // This process ended before the signal was armed: nothing would kill the child.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    command.spawn()
}

/// Appends `line` to the worker's log (`$WORKER_LOG`), the file kept open: one `O_APPEND`
/// write per line, so a worker killed with SIGKILL leaves whole lines only. What the tests read
/// back of a worker's attempts.
pub fn worker_log(line: &str) {
    use std::io::Write as _;
    static FILE: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();
    let mut file = FILE.get_or_init(|| {
        let path = std::env::var("WORKER_LOG").expect("WORKER_LOG is set");
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("worker log")
    });
    file.write_all(format!("{line}\n").as_bytes())
        .expect("write worker log");
}

/// A worker process's logging (`rk-worker`, `rk-soak-worker`, `rk-outage-worker`): to stderr, at `RUST_LOG`'s
/// levels, warnings and errors when it is not set.
pub fn init_worker_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Logs to the test's output when `RUST_LOG` is set (errors otherwise).
pub fn init_test_tracing() {
    init_test_tracing_or("error");
}

/// Logs to the test's output (shown when the test fails) at `RUST_LOG`, or else at `default`
/// (an `EnvFilter` directive): a test that kills brokers keeps its consumers' warnings, so a
/// failure in CI says what the consumers saw.
pub fn init_test_tracing_or(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// The Apache Kafka release that `scripts/install-test-deps.sh` installs into
/// `.tools/kafka-<version>/libs/` (`scripts/kafka/pom.xml` says why this one).
pub const APACHE_KAFKA_VERSION: &str = "4.4.0";

/// A real Apache Kafka broker: one KRaft node in combined mode (broker and controller in one
/// JVM) on two free loopback ports, with its log directories, configuration and logs in a fresh
/// temporary directory. The JVM (its own child, by its handle) is killed and the directory
/// removed on drop; `RK_KEEP_BROKER_LOG` keeps the directory. The JVM also dies with the process
/// that started it, so a test binary that is killed leaves no broker behind.
///
/// The JVM runs with a small heap and flags that start it quickly (C1 only, serial GC):
/// `RK_KAFKA_JVM_OPTS` replaces them, e.g. `-Xms1g -Xmx1g -XX:+UseG1GC` for a benchmark that
/// wants the broker's steady-state speed (C2).
pub struct ApacheKafka {
    /// Locked only to stop it: a shared broker is stopped through a `&'static` at exit.
    child: Mutex<Child>,
    pub bootstrap: String,
    /// From the start of [`ApacheKafka::start`] until the broker answered a metadata request.
    pub startup: Duration,
    dir: PathBuf,
}

impl ApacheKafka {
    /// The broker's JVM process id.
    pub fn pid(&self) -> u32 {
        self.child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .id()
    }

    /// The jars: `$KAFKA_LIBS` (any Kafka 4.x `libs/` directory), or
    /// `.tools/kafka-<version>/libs` as `scripts/install-test-deps.sh` installs them.
    pub fn libs() -> PathBuf {
        let path = std::env::var_os("KAFKA_LIBS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join(format!(".tools/kafka-{APACHE_KAFKA_VERSION}/libs"))
            });
        let has_broker = std::fs::read_dir(&path).is_ok_and(|entries| {
            entries.flatten().any(|entry| {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                name.starts_with("kafka_2.13-") && name.ends_with(".jar")
            })
        });
        assert!(
            has_broker,
            "the Apache Kafka broker is not installed at {} (no kafka_2.13-*.jar): run \
             ./scripts/install-test-deps.sh to install it, or set KAFKA_LIBS",
            path.display()
        );
        path
    }

    /// `$JAVA_HOME/bin/java`, or `java` on the `PATH`: Java 17 or newer.
    pub fn java() -> PathBuf {
        let from_home = std::env::var_os("JAVA_HOME")
            .map(|home| PathBuf::from(home).join("bin/java"))
            .filter(|java| java.is_file());
        let on_path = || {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join("java"))
                    .find(|candidate| candidate.is_file())
            })
        };
        from_home.or_else(on_path).unwrap_or_else(|| {
            panic!(
                "java is not installed: the Apache Kafka broker needs Java 17+; install it with \
                 `sudo apt-get install openjdk-17-jre-headless`, or set JAVA_HOME"
            )
        })
    }

    /// One broker for all the tests of this process that can share it (each with topics and
    /// groups of its own), started on first use: a JVM start costs 5-10 s on 2 cores. A static
    /// is never dropped, so the broker is killed and its directory removed when the process
    /// exits, failed tests included; were the process killed, its JVM dies with it all the same.
    pub fn shared() -> &'static ApacheKafka {
        static SHARED: OnceLock<ApacheKafka> = OnceLock::new();
        extern "C" fn stop_shared() {
            if let Some(broker) = SHARED.get() {
                broker.stop();
            }
        }
        SHARED.get_or_init(|| {
            let broker = ApacheKafka::start();
            // SAFETY: registers a function that takes nothing and returns nothing.
            let registered = unsafe { libc::atexit(stop_shared) };
            assert_eq!(registered, 0, "atexit refused the shared broker's cleanup");
            broker
        })
    }

    /// Formats the storage of a new cluster, starts the broker and waits until it answers a
    /// metadata request (60 s at most).
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// [`start`](Self::start) with broker properties of the caller's appended to the
    /// configuration (`name=value` lines; a later line wins).
    pub fn start_with(extra_properties: &str) -> Self {
        Self::start_configured(|_, _| (extra_properties.to_owned(), Vec::new()))
    }

    /// A broker with three more listeners beside its plaintext one, each on a free loopback
    /// port: TLS, SASL/SCRAM-SHA-512 over TLS and SASL/PLAIN, with certificates made by
    /// `openssl` for this broker (see [`SecuredKafka`]). Its authorizer (`StandardAuthorizer`)
    /// allows everything on a resource without ACLs, and the plaintext listener's principal
    /// (`User:ANONYMOUS`) everything: a test denies an operation with
    /// [`SecuredKafka::add_acls`].
    pub fn start_secured() -> SecuredKafka {
        let mut ports = [0; 3];
        let mut ca_file = PathBuf::new();
        let broker = Self::start_configured(|dir, [tls, scram, plain]| {
            ports = [tls, scram, plain];
            let certificates = dir.join("tls");
            std::fs::create_dir_all(&certificates).expect("certificate directory");
            make_certificates(&certificates);
            // Kafka's PEM key store: the (unencrypted PKCS#8) key and the certificate chain.
            let key = std::fs::read_to_string(certificates.join("key.pem")).unwrap();
            let cert = std::fs::read_to_string(certificates.join("cert.pem")).unwrap();
            std::fs::write(certificates.join("keystore.pem"), key + &cert).unwrap();
            ca_file = certificates.join("ca.pem");
            let properties = format!(
                "listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller},\
                 SSL://127.0.0.1:{tls},SASL_SSL://127.0.0.1:{scram},SASL_PLAINTEXT://127.0.0.1:{plain}\n\
                 advertised.listeners=PLAINTEXT://127.0.0.1:{port},SSL://127.0.0.1:{tls},\
                 SASL_SSL://127.0.0.1:{scram},SASL_PLAINTEXT://127.0.0.1:{plain}\n\
                 listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SSL:SSL,\
                 SASL_SSL:SASL_SSL,SASL_PLAINTEXT:SASL_PLAINTEXT\n\
                 ssl.keystore.type=PEM\n\
                 ssl.keystore.location={keystore}\n\
                 sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN\n\
                 listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512\n\
                 listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=\
                 org.apache.kafka.common.security.scram.ScramLoginModule required;\n\
                 listener.name.sasl_plaintext.sasl.enabled.mechanisms=PLAIN\n\
                 listener.name.sasl_plaintext.plain.sasl.jaas.config=\
                 org.apache.kafka.common.security.plain.PlainLoginModule required \
                 user_{PLAIN_USER}=\"{PLAIN_PASSWORD}\";\n\
                 authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer\n\
                 allow.everyone.if.no.acl.found=true\n\
                 super.users=User:ANONYMOUS\n",
                port = "{port}",
                controller = "{controller}",
                keystore = certificates.join("keystore.pem").display(),
            );
            // SCRAM credentials live in the cluster's metadata: written when it is formatted.
            let scram_user = format!("SCRAM-SHA-512=[name={SCRAM_USER},password={SCRAM_PASSWORD}]");
            (properties, vec!["--add-scram".into(), scram_user])
        });
        let at = |port: u16| format!("127.0.0.1:{port}");
        SecuredKafka {
            tls: at(ports[0]),
            sasl_ssl: at(ports[1]),
            sasl_plaintext: at(ports[2]),
            ca_file,
            broker,
        }
    }

    /// Starts a broker whose configuration ends with the properties `extra` returns, given the
    /// broker's directory and three more free ports, and whose storage is formatted with the
    /// arguments it returns too. `{port}` and `{controller}` in the properties are replaced by
    /// the plaintext and controller ports.
    fn start_configured(extra: impl FnOnce(&Path, [u16; 3]) -> (String, Vec<String>)) -> Self {
        let started = Instant::now();
        let (java, libs) = (Self::java(), Self::libs());
        let [port, controller, more1, more2, more3] = free_ports();

        remove_directories_of_killed_processes(APACHE_KAFKA_DIRECTORY);
        let dir = std::env::temp_dir().join(format!("{APACHE_KAFKA_DIRECTORY}{port}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("broker directory");
        let (extra_properties, format_args) = extra(&dir, [more1, more2, more3]);
        let extra_properties = extra_properties
            .replace("{port}", &port.to_string())
            .replace("{controller}", &controller.to_string());
        let config = dir.join("server.properties");
        std::fs::write(
            &config,
            format!(
                "process.roles=broker,controller\n\
                 node.id=1\n\
                 controller.quorum.bootstrap.servers=127.0.0.1:{controller}\n\
                 listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
                 advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
                 listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
                 inter.broker.listener.name=PLAINTEXT\n\
                 controller.listener.names=CONTROLLER\n\
                 log.dirs={}\n\
                 offsets.topic.replication.factor=1\n\
                 transaction.state.log.replication.factor=1\n\
                 transaction.state.log.min.isr=1\n\
                 share.coordinator.state.topic.replication.factor=1\n\
                 share.coordinator.state.topic.min.isr=1\n\
                 group.initial.rebalance.delay.ms=0\n\
                 num.partitions=1\n\
                 auto.create.topics.enable=false\n\
                 {extra_properties}\n",
                dir.join("data").display()
            ),
        )
        .expect("broker configuration");

        let java_command = || broker_java(&java, &libs, &dir);

        // A single-node dynamic quorum (KIP-853): the node is the one voter of its controller.
        let cluster_id = random_cluster_id();
        let format = java_command()
            .args(["kafka.tools.StorageTool", "format", "--cluster-id", &cluster_id])
            .arg("--config")
            .arg(&config)
            .arg("--standalone")
            .args(&format_args)
            .output()
            .unwrap_or_else(|error| panic!("start {} (Java 17+): {error}", java.display()));
        assert!(
            format.status.success(),
            "formatting the Apache Kafka storage failed ({}; the broker needs Java 17+): {}{}",
            format.status,
            String::from_utf8_lossy(&format.stdout),
            String::from_utf8_lossy(&format.stderr)
        );

        let child = spawn_broker(&java, &libs, &dir);
        let mut broker = ApacheKafka {
            child: Mutex::new(child),
            bootstrap: format!("127.0.0.1:{port}"),
            startup: Duration::ZERO,
            dir,
        };
        broker.wait_until_ready(port, started + Duration::from_secs(60));
        broker.startup = started.elapsed();
        broker
    }

    /// Kills the broker with SIGKILL (by its handle), as a crash would, and keeps its data for
    /// [`start_again`](Self::start_again).
    pub fn kill(&self) {
        let mut child = self.child.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills the broker with SIGKILL, waits `down_for`, and starts it again on its data and
    /// ports; returns once it answers a metadata request (60 s at most).
    pub fn restart(&mut self, down_for: Duration) {
        self.kill();
        std::thread::sleep(down_for);
        self.start_again();
    }

    /// Starts the broker again on its data, at the same address, after [`kill`](Self::kill);
    /// returns once it answers a metadata request (60 s at most).
    pub fn start_again(&mut self) {
        let port = self
            .bootstrap
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .expect("127.0.0.1:<port>");
        *self
            .child
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) =
            spawn_broker(&Self::java(), &Self::libs(), &self.dir);
        self.wait_until_ready(port, Instant::now() + Duration::from_secs(60));
    }

    /// The broker's log (WARN and up, and `kafka.server` at INFO).
    pub fn log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// Waits for a TCP connection, then for an answer to a metadata request that lists the
    /// broker (the port is bound before the broker handles requests).
    fn wait_until_ready(&mut self, port: u16, deadline: Instant) {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let mut client: Option<BaseConsumer> = None;
        loop {
            let child = self
                .child
                .get_mut()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Ok(Some(status)) = child.try_wait() {
                panic!("Apache Kafka exited with {status}; {}", self.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "Apache Kafka did not answer on {} within 60 s; {}",
                self.bootstrap,
                self.log_tail()
            );
            // A client only once the port listens: librdkafka would log every refused connection.
            if client.is_some() || TcpStream::connect(("127.0.0.1", port)).is_ok() {
                let client = client.get_or_insert_with(|| {
                    rdkafka::ClientConfig::new()
                        .set("bootstrap.servers", &self.bootstrap)
                        .create()
                        .expect("metadata client")
                });
                let answered = client
                    .fetch_metadata(None, Duration::from_secs(1))
                    .is_ok_and(|metadata| !metadata.brokers().is_empty());
                if answered {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of the broker's log and of the JVM's own output, for a panic message.
    fn log_tail(&self) -> String {
        let tail = |path: &Path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        format!(
            "log {}:\n{}\nJVM output:\n{}",
            self.log().display(),
            tail(&self.log()),
            tail(&self.dir.join("stdout.log"))
        )
    }

    /// Kills the JVM (by its handle: only the child this process started, and not again once
    /// it is reaped) and removes the directory, unless `RK_KEEP_BROKER_LOG` is set.
    fn stop(&self) {
        let mut child = self.child.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let _ = child.kill();
        let _ = child.wait();
        if std::env::var_os("RK_KEEP_BROKER_LOG").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("Apache Kafka's directory kept: {}", self.dir.display());
        }
    }
}

impl Drop for ApacheKafka {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The SCRAM-SHA-512 user of [`ApacheKafka::start_secured`] and its password.
pub const SCRAM_USER: &str = "alice";
pub const SCRAM_PASSWORD: &str = "alice-scram-secret";
/// The SASL/PLAIN user of [`ApacheKafka::start_secured`] and its password.
pub const PLAIN_USER: &str = "bob";
pub const PLAIN_PASSWORD: &str = "bob-plain-secret";
/// [`PLAIN_USER`]'s principal, as ACLs name it.
pub const PLAIN_PRINCIPAL: &str = "User:bob";

/// An Apache Kafka broker with a listener per security protocol (its plaintext one is
/// `broker.bootstrap`). Every listener's certificate is signed by the CA in [`ca_file`].
///
/// [`ca_file`]: SecuredKafka::ca_file
pub struct SecuredKafka {
    pub broker: ApacheKafka,
    /// `SSL`: TLS, no client authentication.
    pub tls: String,
    /// `SASL_SSL` with SCRAM-SHA-512 ([`SCRAM_USER`]).
    pub sasl_ssl: String,
    /// `SASL_PLAINTEXT` with PLAIN ([`PLAIN_USER`]).
    pub sasl_plaintext: String,
    /// The CA certificate (PEM) to trust.
    pub ca_file: PathBuf,
}

/// `java` with the broker's JVM flags, logging into `dir` and the jars of `libs` on its class
/// path: a command for the broker or one of Kafka's tools.
fn broker_java(java: &Path, libs: &Path, dir: &Path) -> Command {
    let mut command = Command::new(java);
    command
        .args(jvm_options())
        .arg(format!("-Dkafka.logs.dir={}", dir.display()))
        .arg("-cp")
        .arg(libs.join("*"));
    if let Some(logging) = log4j_configuration(libs) {
        command.arg(format!("-Dlog4j2.configurationFile={}", logging.display()));
    }
    command
}

/// Starts the broker configured in `dir` (`server.properties`), its output appended to
/// `stdout.log` there; it dies with this process.
fn spawn_broker(java: &Path, libs: &Path, dir: &Path) -> Child {
    let output = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("stdout.log"))
        .expect("broker output file");
    let mut broker = broker_java(java, libs, dir);
    broker
        .arg("kafka.Kafka")
        .arg(dir.join("server.properties"))
        .stdout(Stdio::from(output.try_clone().unwrap()))
        .stderr(Stdio::from(output));
    spawn_dying_with_this_process(broker).unwrap_or_else(|error| panic!("start {}: {error}", java.display()))
}

/// How the temporary directory of an Apache Kafka broker begins; `<port>-<pid>` follows.
const APACHE_KAFKA_DIRECTORY: &str = "retry-kafka-apache-kafka-";

/// Removes the temporary directories named `<prefix><anything>-<pid>` whose process is gone: a
/// test process that was killed had no chance to remove its broker's.
fn remove_directories_of_killed_processes(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|name| name.strip_prefix(prefix)) else {
            continue;
        };
        let pid = rest.rsplit('-').next().and_then(|pid| pid.parse::<u32>().ok());
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The broker's JVM flags: `RK_KAFKA_JVM_OPTS`, or a small heap and a quick start. Measured on
/// 2 cores (format + broker until "Kafka Server started"): G1 with C2 7-12 s, serial GC 6-8 s,
/// serial GC and C1 only (`TieredStopAtLevel=1`) 5-6 s.
fn jvm_options() -> Vec<String> {
    match std::env::var("RK_KAFKA_JVM_OPTS") {
        Ok(options) if !options.trim().is_empty() => options.split_whitespace().map(str::to_owned).collect(),
        _ => [
            "-Xms256m",
            "-Xmx512m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            // No /tmp/hsperfdata_<user>/<pid> file, which a killed JVM would leave behind.
            "-XX:-UsePerfData",
            "-Djava.awt.headless=true",
        ]
        .map(str::to_owned)
        .to_vec(),
    }
}

/// The log4j2 configuration next to the jars: `config/log4j2.properties` as the install script
/// writes it, or `config/log4j2.yaml` of an Apache Kafka distribution.
fn log4j_configuration(libs: &Path) -> Option<PathBuf> {
    let config = libs.parent()?.join("config");
    ["log4j2.properties", "log4j2.yaml"]
        .iter()
        .map(|name| config.join(name))
        .find(|path| path.is_file())
}

/// A new cluster id: 16 random bytes, base64url without padding, as Kafka's `Uuid` prints it
/// (not starting with `-`, which the format command would take for an option).
fn random_cluster_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut bytes = [0u8; 16];
    for (index, chunk) in bytes.chunks_mut(8).enumerate() {
        // A RandomState is seeded from the OS once per thread and advanced for each new one.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_usize(index);
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        chunk.copy_from_slice(&hasher.finish().to_le_bytes());
    }
    bytes[0] &= 0x7f; // the first character is one of A-Za-f
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let (mut id, mut buffer, mut bits) = (String::with_capacity(22), 0u32, 0u32);
    for byte in bytes {
        buffer = ((buffer << 8) | u32::from(byte)) & 0xffff;
        bits += 8;
        while bits >= 6 {
            bits -= 6;
            id.push(ALPHABET[((buffer >> bits) & 63) as usize] as char);
        }
    }
    if bits > 0 {
        id.push(ALPHABET[((buffer << (6 - bits)) & 63) as usize] as char);
    }
    id
}

/// In `dir`: a CA (`ca.pem`, `ca.key`) and a server certificate for 127.0.0.1 it signs
/// (`cert.pem`, its unencrypted PKCS#8 key `key.pem`), made with `openssl` for a test's TLS
/// server.
fn make_certificates(dir: &Path) {
    make_certificates_for(dir, "IP:127.0.0.1");
}

/// In `dir`: a CA (`ca.pem`, `ca.key`) and a server certificate it signs for
/// `subject_alt_names`, in openssl's syntax (`IP:127.0.0.1,DNS:localhost`): `cert.pem`, its
/// unencrypted PKCS#8 key `key.pem`.
pub fn make_certificates_for(dir: &Path, subject_alt_names: &str) {
    // A CA, and a server certificate that it signs (rustls refuses a self-signed certificate
    // used as both).
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=retry-kafka test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    let first_name = subject_alt_names.split(',').next().unwrap_or_default();
    let common_name = first_name.split_once(':').map_or(first_name, |(_, name)| name);
    sign(
        dir,
        common_name,
        ("key.pem", "cert.pem"),
        &format!(
            "subjectAltName={subject_alt_names}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
        ),
    );
}

/// In `dir`, beside the CA [`make_certificates_for`] made there: a client certificate for
/// `user` (its CN, which PostgreSQL's `cert` authentication compares with the user name),
/// `client.pem`, and its unencrypted PKCS#8 key, `client.key`.
pub fn make_client_certificate(dir: &Path, user: &str) {
    sign(
        dir,
        user,
        ("client.key", "client.pem"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    );
}

/// A key and a certificate for `common_name` with `extensions`, signed by `dir`'s CA, written
/// to `dir` as `key` and `cert`.
fn sign(dir: &Path, common_name: &str, (key, cert): (&str, &str), extensions: &str) {
    let (csr, ext) = (format!("{cert}.csr"), format!("{cert}.ext"));
    std::fs::write(dir.join(&ext), extensions).unwrap();
    let subject = format!("/CN={common_name}");
    openssl(
        dir,
        &[
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", &subject, "-keyout", key, "-out", &csr,
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            cert,
        ],
    );
}

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl is not installed: run ./scripts/install-test-deps.sh");
    assert!(status.success(), "openssl {args:?} failed");
}

/// A `redis-server` process on a free loopback port, with its data in a directory of its own.
/// Stopped (SIGKILL, by its own handle) on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    password: Option<String>,
    append_only: bool,
    /// Serves TLS only, with a self-signed certificate for 127.0.0.1.
    tls: bool,
    /// A node of a Redis Cluster (`--cluster-enabled yes`), with its cluster bus port:
    /// [`RedisCluster`].
    cluster: Option<u16>,
    /// More options for the command line (a replica's `--replicaof`, say: [`RedisSentinel`]).
    options: Vec<String>,
    /// A sentinel (`redis-server sentinel.conf --sentinel`) with this configuration, written
    /// to its directory at launch: [`RedisSentinel`].
    sentinel: Option<String>,
    dir: PathBuf,
}

impl RedisServer {
    /// The binary: `$REDIS_SERVER_BIN`, or `redis-server` as `scripts/install-test-deps.sh`
    /// installs it (Debian's package).
    pub fn binary() -> PathBuf {
        if let Some(path) = std::env::var_os("REDIS_SERVER_BIN") {
            return PathBuf::from(path);
        }
        let found = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("redis-server"))
                .find(|candidate| candidate.is_file())
        });
        found.unwrap_or_else(|| {
            panic!(
                "redis-server is not installed: run ./scripts/test.sh (or ./scripts/install-test-deps.sh) \
                 to install it, or set REDIS_SERVER_BIN"
            )
        })
    }

    /// A server without persistence or password.
    pub fn start() -> Self {
        Self::start_with(None, false)
    }

    /// A server that requires `password` (when given) and, with `append_only`, logs every write
    /// to an append-only file (fsync every write) so a restart keeps what was acknowledged.
    pub fn start_with(password: Option<&str>, append_only: bool) -> Self {
        Self::launched_on_free_ports(|[port, _]| {
            let mut server = RedisServer::unlaunched(port);
            server.password = password.map(str::to_owned);
            server.append_only = append_only;
            server
        })
    }

    /// `make(ports)`'s server, launched on free ports: again on others when the port turns
    /// out to be another process's (a server of a test running beside this one may take a port
    /// between `free_ports` and this server's bind; this one then exits, and the other would
    /// answer in its place).
    fn launched_on_free_ports(make: impl Fn([u16; 2]) -> Self) -> Self {
        for _ in 0..5 {
            let mut server = make(free_ports());
            std::fs::create_dir_all(&server.dir).expect("redis data directory");
            match server.try_launch() {
                Ok(()) if server.is_ours() => return server,
                Ok(()) => server.kill(),
                // A port taken by another test's server between `free_ports` and the bind
                // (the cluster bus port too): the server exits at once; others are tried.
                Err(log) if log.contains("Address already in use") => server.kill(),
                Err(log) => panic!("redis-server exited before it listened; log: {log}"),
            }
        }
        panic!("five redis-servers in a row found their port taken by another process");
    }

    /// Whether the server answering on the port is this one's child (`INFO server`'s
    /// `process_id`). A TLS server is taken as ours (it is not started beside others).
    fn is_ours(&mut self) -> bool {
        use std::io::{Read as _, Write as _};
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        if self.tls {
            return true;
        }
        let pid = child.id().to_string();
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        // RESP arrays: a password may hold spaces.
        let mut request = String::new();
        if let Some(password) = &self.password {
            request += &format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{password}\r\n", password.len());
        }
        request += "*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n";
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let (mut reply, mut buffer) = (Vec::new(), [0u8; 4096]);
        while let Ok(read @ 1..) = stream.read(&mut buffer) {
            reply.extend_from_slice(&buffer[..read]);
            let text = String::from_utf8_lossy(&reply);
            if let Some(at) = text.find("process_id:") {
                if let Some(end) = text[at..].find("\r\n") {
                    return text[at + "process_id:".len()..at + end] == pid;
                }
            }
        }
        false
    }

    /// A server on `port`, not launched yet, without persistence, password, TLS or options,
    /// with a data directory of its own.
    fn unlaunched(port: u16) -> Self {
        let dir = std::env::temp_dir().join(format!("retry-kafka-redis-{port}-{}", std::process::id()));
        RedisServer {
            child: None,
            port,
            password: None,
            append_only: false,
            tls: false,
            cluster: None,
            options: Vec::new(),
            sentinel: None,
            dir,
        }
    }

    /// A node for [`RedisCluster`]: cluster mode on, no persistence, no password.
    fn start_cluster_node() -> Self {
        // The bus port too: by default it is the port + 10000, which another test may hold.
        Self::launched_on_free_ports(|[port, bus]| {
            let mut server = RedisServer::unlaunched(port);
            server.cluster = Some(bus);
            server
        })
    }

    /// Kills the server (SIGKILL), as a crashed machine goes.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A server that speaks TLS only (`rediss://`), with a certificate for 127.0.0.1 signed by
    /// a CA made for it with `openssl`: [`RedisServer::ca_file`] is the root to trust.
    pub fn start_tls() -> Self {
        let mut server = Self::start_with(None, false);
        if let Some(mut child) = server.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        make_certificates(&server.dir);
        server.tls = true;
        server.launch();
        server
    }

    /// The certificate of the CA that signed a TLS server's certificate, PEM.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// `redis://[:password@]127.0.0.1:port`.
    pub fn url(&self) -> String {
        if self.tls {
            return format!("rediss://127.0.0.1:{}", self.port);
        }
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server runs").id()
    }

    /// The URL without the password.
    pub fn url_without_password(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server the way an operator does (SIGTERM: it writes its append-only file and
    /// exits), then starts it again on the same port and data directory.
    pub fn restart(&mut self, down_for: Duration) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
        std::thread::sleep(down_for);
        self.launch();
    }

    fn launch(&mut self) {
        if let Err(log) = self.try_launch() {
            panic!("redis-server exited before it listened; log: {log}");
        }
    }

    /// Starts the server and waits until it listens; `Err(its log)` when it exits first.
    fn try_launch(&mut self) -> Result<(), String> {
        let log = self.dir.join("server.log");
        let mut command = Command::new(Self::binary());
        if let Some(config) = &self.sentinel {
            // A sentinel rewrites its configuration file as it learns: one of its own.
            let file = self.dir.join("sentinel.conf");
            std::fs::write(&file, config).expect("write sentinel.conf");
            command.arg(&file).arg("--sentinel");
        }
        if self.tls {
            let (cert, key) = (self.dir.join("cert.pem"), self.dir.join("key.pem"));
            command
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(&cert)
                .arg("--tls-key-file")
                .arg(&key)
                .arg("--tls-ca-cert-file")
                .arg(self.ca_file())
                .args(["--tls-auth-clients", "no"]);
        } else {
            command.args(["--port", &self.port.to_string()]);
        }
        command
            .args(["--bind", "127.0.0.1"])
            .args(["--dir", self.dir.to_str().expect("utf-8 temp dir")])
            .args([
                "--save",
                "",
                "--daemonize",
                "no",
                "--logfile",
                log.to_str().unwrap(),
            ]);
        if self.sentinel.is_some() {
            // Neither persistence nor a save point in a sentinel.
        } else if self.append_only {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        command.args(&self.options);
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        if let Some(bus) = self.cluster {
            // A node is failed over after 2 s without answers (15 s by default), so the
            // failover tests take seconds.
            command.args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]);
            command.args([
                "--cluster-port",
                &bus.to_string(),
                "--cluster-node-timeout",
                "2000",
            ]);
            // A replica's first sync at once, not after the default 5 s wait for more replicas.
            command.args(["--repl-diskless-sync-delay", "0"]);
        }
        command.stdout(Stdio::null()).stderr(Stdio::null());
        let child = spawn_dying_with_this_process(command).expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(status)) = self.child.as_mut().unwrap().try_wait() {
                self.child = None;
                return Err(format!(
                    "{status}; {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ));
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {} within 20 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    /// The helper process's part of the first test (`RK_SPAWN_HELPER=sleep`): spawns a long
    /// `sleep` that should die with this process, not with the thread that asked for it, and
    /// prints its pid.
    // Never waited for: the helper is SIGKILLed, and whoever inherits the sleep reaps it.
    #[allow(clippy::zombie_processes)]
    fn spawn_a_sleep() -> Vec<u32> {
        let mut sleep = Command::new("sleep");
        sleep.arg("60");
        // Asked for by a thread that ends at once, as a test's or a blocking pool's thread does.
        let child = std::thread::spawn(move || spawn_dying_with_this_process(sleep))
            .join()
            .expect("the asking thread")
            .expect("spawn sleep");
        vec![child.id()]
    }

    /// The helper process's part of the second test (`RK_SPAWN_HELPER=servers`): starts a
    /// `redis-server` and a `postgres` (which runs as another user when this is root), and
    /// prints their pids.
    fn start_servers() -> Vec<u32> {
        let redis = RedisServer::start();
        let postgres = PostgresServer::start();
        let pids = vec![redis.pid(), postgres.pid()];
        // Never stopped by this process: only the kernel's signal can stop them.
        std::mem::forget((redis, postgres));
        pids
    }

    /// Runs `test` again as a helper process (`RK_SPAWN_HELPER` set to `role`, no ignored test
    /// to stand in), which spawns children and prints their pids; kills the helper with
    /// SIGKILL and checks its children died within 10 s. Returns the helper's pid.
    fn children_die_with(test: &str, role: &str) -> u32 {
        let mut helper = Command::new(std::env::current_exe().expect("this test binary"))
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env("RK_SPAWN_HELPER", role)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the helper process");
        let output = BufReader::new(helper.stdout.take().expect("the helper's output"));
        let pids: Vec<u32> = output
            .lines()
            .map_while(Result::ok)
            // libtest has printed `test <name> ... ` on the same line.
            .find_map(|line| {
                let pids = line.split_once("child pids ")?.1;
                pids.split_whitespace().map(|pid| pid.parse().ok()).collect()
            })
            .expect("the helper printed its children's pids");
        // Dead: gone, or a zombie until whoever inherited it reaps it.
        let dead = |pid: u32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
                stat.rsplit(')')
                    .next()
                    .is_some_and(|rest| rest.trim_start().starts_with('Z'))
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        let alive: Vec<bool> = pids.iter().map(|&pid| !dead(pid)).collect();

        // The helper's own process, by its handle: SIGKILL, so nothing of it runs after.
        let helper_pid = helper.id();
        helper.kill().expect("SIGKILL the helper");
        helper.wait().expect("reap the helper");
        assert!(
            alive.iter().all(|&alive| alive),
            "the helper's children {pids:?} were not all alive before it was killed: {alive:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(&pid) = pids.iter().find(|&&pid| !dead(pid)) {
            if Instant::now() > deadline {
                for &pid in &pids {
                    // SAFETY: a signal to a child the helper had spawned, seen alive just now.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                }
                panic!("the helper's child {pid} (of {pids:?}) outlived it by 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        helper_pid
    }

    /// In the helper process: spawns what `RK_SPAWN_HELPER` says, prints the pids and waits
    /// to be killed. Returns false in the test's own process.
    fn serve_as_helper() -> bool {
        let pids = match std::env::var("RK_SPAWN_HELPER").as_deref() {
            Ok("sleep") => spawn_a_sleep(),
            Ok("servers") => start_servers(),
            _ => return false,
        };
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        println!("child pids {}", pids.join(" "));
        std::thread::sleep(Duration::from_secs(120));
        true
    }

    #[test]
    fn a_child_dies_with_the_process_not_with_the_thread_that_spawned_it() {
        if serve_as_helper() {
            return;
        }
        children_die_with(
            "tests::a_child_dies_with_the_process_not_with_the_thread_that_spawned_it",
            "sleep",
        );
    }

    #[test]
    fn redis_server_and_postgres_die_with_the_process_that_started_them() {
        if serve_as_helper() {
            return;
        }
        let helper = children_die_with(
            "tests::redis_server_and_postgres_die_with_the_process_that_started_them",
            "servers",
        );
        // What the killed helper could not remove.
        for prefix in ["retry-kafka-redis-", "retry-kafka-pg-"] {
            let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(prefix) && name.ends_with(&format!("-{helper}")) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }
}
