//! Moving a Redis deployment from one server to a Redis Cluster (docs/redis.md, "From one
//! server to a cluster"): drain-and-switch, with the dead letters carried over by `retry-kafka
//! dlq export` (on the server) piped into `retry-kafka dlq import` (on the cluster). Both run
//! on Debian's redis-server, started by the test on free loopback ports: every entry arrives
//! in the partition it had, key, payload and headers byte for byte (a binary payload, a
//! header twice, a binary header value), and the tool reads them on the cluster as it did on
//! the server.

use std::io::Write as _;
use std::process::{Command, Stdio};

use retry_kafka::backend::redis::Redis;
use retry_kafka::backend::{
    Browse as _, OutboundRecord, Publish as _, Record, Topic, TopicAdmin as _, TopicRole,
};
use retry_kafka::headers::{names, Headers};
use retry_kafka::Bytes;
use retry_kafka_suite::{RedisCluster, RedisServer};

const QUEUE: &str = "mig.orders.mig-billing.dlq";
const PARTITIONS: u32 = 4;
const ENTRIES: u64 = 40;

fn tool(connection: &[&str], args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_retry-kafka"));
    command
        .args(connection)
        .args(args)
        .env_remove("KAFKA_BROKERS")
        .env_remove("REDIS_URL")
        .env_remove("REDIS_CLUSTER_URLS")
        .env_remove("RETRY_KAFKA_BACKEND")
        .env_remove("DATABASE_URL");
    command
}

/// Dead letter `n`: failure headers as the runtime writes them, then a header twice and a
/// binary one; a binary payload on every third.
fn dead_letter(n: u64) -> OutboundRecord {
    let mut headers = Headers::new();
    for (name, value) in [
        (names::ORIGINAL_TOPIC, "mig.orders".to_owned()),
        (names::ORIGINAL_PARTITION, (n % PARTITIONS as u64).to_string()),
        (names::ORIGINAL_OFFSET, n.to_string()),
        (names::GROUP, "mig-billing".to_owned()),
        (names::ATTEMPTS, "3".to_owned()),
        (names::FIRST_FAILURE_AT, "1796580000000".to_owned()),
        (names::LAST_FAILURE_AT, "1796580003000".to_owned()),
        (names::ERROR_KIND, "permanent".to_owned()),
        (names::ERROR_MESSAGE, format!("order {n} is invalid")),
    ] {
        headers.insert(name, value);
    }
    headers.insert("trace", "a");
    headers.insert("trace", "b");
    headers.insert("blob", Bytes::from(vec![0u8, 255, 10, n as u8]));
    let payload = match n % 3 {
        0 => Bytes::from(vec![0xff, 0xfe, n as u8, 0]),
        _ => Bytes::from(format!("{{\"id\":{n}}}")),
    };
    OutboundRecord {
        partition: Some((n % PARTITIONS as u64) as u32),
        key: Some(Bytes::from(format!("order-{n}"))),
        payload: Some(payload),
        headers,
    }
}

/// An entry as the comparison sees it: key, payload, headers in order.
type Entry = (Option<Bytes>, Option<Bytes>, Vec<(String, Vec<u8>)>);

/// Per partition, its entries in order.
fn contents(records: &[Record]) -> Vec<Vec<Entry>> {
    let mut per_partition = vec![Vec::new(); PARTITIONS as usize];
    for record in records {
        let headers = record
            .headers
            .iter()
            .map(|(name, value)| (name.to_owned(), value.to_vec()))
            .collect();
        per_partition[record.partition as usize].push((record.key.clone(), record.payload.clone(), headers));
    }
    per_partition
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_move_from_one_server_to_a_cluster_byte_for_byte() {
    let server = RedisServer::start();
    let cluster = tokio::task::spawn_blocking(RedisCluster::start).await.unwrap();
    let queue = Topic::new(QUEUE, TopicRole::DeadLetter);
    let old = Redis::builder(server.url()).build().expect("server backend");
    old.create_topic(&queue, PARTITIONS).await.unwrap();
    for n in 0..ENTRIES {
        old.send(&queue, dead_letter(n)).await.unwrap();
    }
    let on_server = old.read(&queue, &[]).await.unwrap();
    assert_eq!(on_server.len() as u64, ENTRIES);
    let traces: Vec<&[u8]> = on_server[0]
        .headers
        .iter()
        .filter(|(name, _)| *name == "trace")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(traces, [b"a", b"b"], "the server keeps a header twice, in order");

    let server_flags = ["--redis-url", &server.url()];
    let urls = cluster.urls().join(",");
    let cluster_flags = ["--redis-cluster-urls", urls.as_str()];
    let queue_args = ["--topic", "mig.orders", "--group", "mig-billing"];

    // A queue the cluster does not have yet needs its partition count.
    let mut import = tool(&cluster_flags, &["dlq", "import"]);
    import
        .args(queue_args)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped());
    let refused = import.spawn().unwrap().wait_with_output().unwrap();
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("does not exist here") && message.contains("--partitions"),
        "{message}"
    );

    let exported = tool(&server_flags, &["dlq", "export"])
        .args(queue_args)
        .output()
        .unwrap();
    assert!(
        exported.status.success(),
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&exported.stdout).lines().count() as u64,
        ENTRIES,
        "one line per entry"
    );
    let mut import = tool(&cluster_flags, &["dlq", "import", "--partitions", "4"]);
    import
        .args(queue_args)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = import.spawn().unwrap();
    child.stdin.take().unwrap().write_all(&exported.stdout).unwrap();
    let imported = child.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&imported.stderr);
    assert!(imported.status.success(), "{report}");
    assert!(
        report.contains(&format!("{ENTRIES} entries imported into {QUEUE}")),
        "{report}"
    );

    let new = Redis::cluster_builder(cluster.urls())
        .build()
        .expect("cluster backend");
    assert_eq!(new.partitions(&queue).await.unwrap(), Some(PARTITIONS));
    let on_cluster = new.read(&queue, &[]).await.unwrap();
    assert_eq!(
        contents(&on_cluster),
        contents(&on_server),
        "every entry, byte for byte, in its partition and order"
    );

    // The tool reads them on the cluster as it did on the server.
    let list = |flags: &[&str]| {
        let output = tool(flags, &["dlq", "list", "--format", "json"])
            .args(queue_args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        for line in &mut lines {
            // Where each one is differs (new stream IDs); what it is does not.
            let object = line.as_object_mut().unwrap();
            object.remove("offset");
            object.remove("timestamp");
            object.remove("age_ms");
        }
        lines.sort_by_key(|line| line["original_offset"].as_u64());
        lines
    };
    let (before, after) = (list(&server_flags), list(&cluster_flags));
    assert_eq!(before.len() as u64, ENTRIES);
    assert_eq!(after, before);
}
