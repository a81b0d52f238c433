//! One topic of 12 partitions on a Redis Cluster (three masters, three replicas) against the
//! same topic on one `redis-server`, same run, same handler, same events.
//!
//! ```text
//! cargo bench --bench redis_cluster          # starts the servers (scripts/install-test-deps.sh)
//! BENCH_EVENTS=200000 BENCH_ROUNDS=5 cargo bench --bench redis_cluster
//! ```
//!
//! Each round runs the app on each side until it has handled `BENCH_EVENTS` (100,000) events
//! (~70 bytes each, written before, keyed so they spread over the partitions), under a fresh
//! consumer group, and reports msg/s (first event to last) and the app's CPU-µs per event.
//! Beside them, from each server's `INFO` (its own CPU and the commands it ran): the Redis
//! CPU-µs per event (the one server; on the cluster the masters and, apart, the replicas that
//! copy them) and, per master, its share of the commands and the streams it holds: the
//! evidence that the partitions spread over the shards. Rounds (`BENCH_ROUNDS`, 3) alternate
//! which side goes first after one unmeasured warm-up round; medians and spread are printed.
//!
//! On two cores this measures what the cluster client costs (a connection per shard, a
//! pipeline split by slot, reads that do not block), not how it scales: every shard runs on the
//! same two cores as the app.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use retry_kafka::backend::redis::Redis;
use retry_kafka::backend::{Topic, TopicAdmin as _};
use retry_kafka::prelude::*;
use retry_kafka_suite::figures::{env_or, median, spread};
use retry_kafka_suite::{process_cpu_time, RedisCluster, RedisServer};
use serde::{Deserialize, Serialize};

const TOPIC: &str = "bench.cluster";
const GROUP: &str = "bench-cluster";
const PARTITIONS: u32 = 12;

static EVENTS: LazyLock<u64> = LazyLock::new(|| env_or("BENCH_EVENTS", 100_000));
static ROUNDS: LazyLock<u64> = LazyLock::new(|| env_or("BENCH_ROUNDS", 3));

static HANDLED: AtomicU64 = AtomicU64::new(0);
static FIRST: Mutex<Option<(Instant, Duration)>> = Mutex::new(None);

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "bench.cluster", key = "order_id")]
struct OrderPlaced {
    order_id: u64,
    amount_cents: u64,
    customer: String,
}

#[retry_handler(group = "bench-cluster", retries = ["1s"], dlq)]
async fn place(order: OrderPlaced) -> Result<(), HandlerError> {
    if HANDLED.fetch_add(1, Ordering::Relaxed) == 0 {
        *FIRST.lock().unwrap() = Some((Instant::now(), process_cpu_time()));
    }
    std::hint::black_box(order);
    Ok(())
}

/// A Redis server's own account: CPU seconds (user + system) and commands run.
#[derive(Clone, Copy, Default)]
struct ServerUse {
    cpu: f64,
    commands: u64,
}

impl ServerUse {
    fn of(port: u16) -> Self {
        let info = RedisCluster::cli(port, &["info", "everything"]);
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|value| value.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        ServerUse {
            cpu: field("used_cpu_user") + field("used_cpu_sys"),
            commands: field("total_commands_processed") as u64,
        }
    }

    fn since(self, before: ServerUse) -> ServerUse {
        ServerUse {
            cpu: self.cpu - before.cpu,
            commands: self.commands - before.commands,
        }
    }
}

/// One side of one round.
struct Round {
    per_second: f64,
    cpu_us: f64,
    /// The servers' CPU-µs per event: the one server, or the cluster's masters.
    redis_cpu_us: f64,
    /// The cluster's replicas' CPU-µs per event (0 for the one server).
    replica_cpu_us: f64,
    /// Per master: its share of the commands run.
    shares: Vec<f64>,
}

/// Writes the events through the backend's own producer, pipelined.
async fn produce(redis: &Redis) {
    let producer = Producer::new(redis.clone());
    let mut sends = futures::stream::FuturesUnordered::new();
    for order_id in 0..*EVENTS {
        let producer = producer.clone();
        sends.push(async move {
            let event = OrderPlaced {
                order_id,
                amount_cents: 500 + order_id % 1000,
                customer: format!("customer-{}", order_id % 97),
            };
            producer.send(&event).await.unwrap();
        });
        if sends.len() >= 256 {
            futures::StreamExt::next(&mut sends).await;
        }
    }
    futures::StreamExt::collect::<Vec<()>>(sends).await;
}

/// Removes the group from every stream, so the next round reads everything.
fn forget_group(ports: &[u16], cluster: bool) {
    for p in 0..PARTITIONS {
        let stream = match cluster {
            true => format!("{{{TOPIC}:{p}}}"),
            false => format!("{{{TOPIC}}}:{p}"),
        };
        for &port in ports {
            // Only the master holding the stream answers it; the others say MOVED.
            RedisCluster::cli(port, &["XGROUP", "DESTROY", &stream, GROUP]);
        }
    }
}

/// Runs the handler on `redis` until every event is handled, measuring the app and the servers
/// on `masters` (and `replicas`).
async fn round(redis: &Redis, masters: &[u16], replicas: &[u16], cluster: bool) -> Round {
    forget_group(masters, cluster);
    HANDLED.store(0, Ordering::SeqCst);
    *FIRST.lock().unwrap() = None;
    let app = App::builder().backend(redis.clone()).build().unwrap();
    let before: Vec<ServerUse> = masters.iter().map(|&p| ServerUse::of(p)).collect();
    let replicas_before: Vec<ServerUse> = replicas.iter().map(|&p| ServerUse::of(p)).collect();
    let running = app.start().await.unwrap();
    while HANDLED.load(Ordering::Relaxed) < *EVENTS {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (first, cpu_first) = FIRST.lock().unwrap().unwrap();
    let elapsed = first.elapsed();
    let cpu = process_cpu_time() - cpu_first;
    let used: Vec<ServerUse> = masters
        .iter()
        .zip(&before)
        .map(|(&p, &b)| ServerUse::of(p).since(b))
        .collect();
    let replicas_used: f64 = replicas
        .iter()
        .zip(&replicas_before)
        .map(|(&p, &b)| ServerUse::of(p).since(b).cpu)
        .fold(0.0, |all, cpu| all + cpu);
    running.shutdown().await.unwrap();
    let events = *EVENTS as f64;
    let commands: u64 = used.iter().map(|u| u.commands).sum();
    Round {
        per_second: events / elapsed.as_secs_f64(),
        cpu_us: cpu.as_secs_f64() * 1e6 / events,
        redis_cpu_us: used.iter().map(|u| u.cpu).sum::<f64>() * 1e6 / events,
        replica_cpu_us: replicas_used * 1e6 / events,
        shares: used
            .iter()
            .map(|u| u.commands as f64 / commands.max(1) as f64)
            .collect(),
    }
}

fn print_round(name: &str, round: u64, r: &Round) {
    let shares: Vec<String> = r.shares.iter().map(|s| format!("{:.0}%", s * 100.0)).collect();
    println!(
        "round {round}: {name:<8} {:>8.0} msg/s {:>5.2} CPU-µs/msg (app) | redis {:>5.2} CPU-µs/msg, replicas {:>5.2} | commands per master {}",
        r.per_second,
        r.cpu_us,
        r.redis_cpu_us,
        r.replica_cpu_us,
        shares.join(" / ")
    );
}

#[tokio::main]
async fn main() {
    let (server, cluster) = tokio::task::spawn_blocking(|| (RedisServer::start(), RedisCluster::start()))
        .await
        .expect("start the servers");
    let one = Redis::builder(server.url()).build().unwrap();
    let sharded = Redis::cluster_builder(cluster.urls()).build().unwrap();
    let masters: Vec<u16> = cluster.masters().iter().map(|(port, _)| *port).collect();
    let replicas: Vec<u16> = cluster
        .nodes
        .iter()
        .map(|node| node.port)
        .filter(|port| !masters.contains(port))
        .collect();
    for redis in [&one, &sharded] {
        redis.create_topic(&Topic::main(TOPIC), PARTITIONS).await.unwrap();
        produce(redis).await;
    }
    let streams: Vec<usize> = masters
        .iter()
        .map(|&port| {
            let keys = RedisCluster::cli(port, &["--scan", "--pattern", &format!("{{{TOPIC}:*}}")]);
            keys.lines().filter(|key| !key.is_empty()).count()
        })
        .collect();
    println!(
        "{} events of ~70 bytes on a topic of {PARTITIONS} partitions: one redis-server, and a Redis \
         Cluster of 3 masters (+3 replicas) holding {streams:?} of its streams",
        *EVENTS
    );

    let (mut ones, mut clusters) = (Vec::new(), Vec::new());
    for number in 0..=*ROUNDS {
        let cluster_first = number % 2 == 1;
        let mut pair = Vec::new();
        for on_cluster in [cluster_first, !cluster_first] {
            let r = match on_cluster {
                true => round(&sharded, &masters, &replicas, true).await,
                false => round(&one, &[server.port], &[], false).await,
            };
            pair.push((on_cluster, r));
        }
        pair.sort_by_key(|(on_cluster, _)| *on_cluster);
        let (one_round, cluster_round) = (pair.remove(0).1, pair.remove(0).1);
        if number == 0 {
            println!("(warm-up round, not counted)");
        }
        print_round("server", number, &one_round);
        print_round("cluster", number, &cluster_round);
        if number > 0 {
            ones.push(one_round);
            clusters.push(cluster_round);
        }
    }
    let med = |rounds: &[Round], f: fn(&Round) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
    let rate_ratios: Vec<f64> = ones
        .iter()
        .zip(&clusters)
        .map(|(o, c)| c.per_second / o.per_second)
        .collect();
    let cpu_ratios: Vec<f64> = ones
        .iter()
        .zip(&clusters)
        .map(|(o, c)| c.cpu_us / o.cpu_us)
        .collect();
    let redis_ratios: Vec<f64> = ones
        .iter()
        .zip(&clusters)
        .map(|(o, c)| c.redis_cpu_us / o.redis_cpu_us)
        .collect();
    let shares: Vec<String> = (0..masters.len())
        .map(|m| {
            let share = median(&clusters.iter().map(|r| r.shares[m]).collect::<Vec<_>>());
            format!("{:.0}%", share * 100.0)
        })
        .collect();
    println!(
        "median: server {:.0} msg/s {:.2} CPU-µs/msg (redis {:.2}); cluster {:.0} msg/s {:.2} CPU-µs/msg \
         (masters {:.2}, replicas {:.2}); cluster/server msg/s {:.2} (spread {}), app CPU {:.2} (spread {}), \
         redis CPU {:.2} (spread {}); commands per master {}",
        med(&ones, |r| r.per_second),
        med(&ones, |r| r.cpu_us),
        med(&ones, |r| r.redis_cpu_us),
        med(&clusters, |r| r.per_second),
        med(&clusters, |r| r.cpu_us),
        med(&clusters, |r| r.redis_cpu_us),
        med(&clusters, |r| r.replica_cpu_us),
        median(&rate_ratios),
        spread(&rate_ratios),
        median(&cpu_ratios),
        spread(&cpu_ratios),
        median(&redis_ratios),
        spread(&redis_ratios),
        shares.join(" / "),
    );
}
