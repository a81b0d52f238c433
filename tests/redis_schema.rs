//! Redis entries across the change of layout: retry-level entries written a field per value
//! (`rk-schema: 1`, as the previous release wrote them, in the stream and in the delay set),
//! then packed (`rk-schema: 2`), all in one stream, drain completely and unchanged, and read the
//! same through `Browse` (what `retry-kafka dlq` uses).

mod conformance;
mod redis_support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Value;
use redis_support::{stream, RedisHarness};
use retry_kafka::backend::{
    Backend as _, Browse as _, Consumer as _, Fetched, OutboundRecord, Publish as _, Subscription, Topic,
    TopicAdmin as _, TopicRole,
};
use retry_kafka::headers::Headers;
use retry_kafka::Bytes;

const RETRY: &str = "schema.billing.retry.1";

/// A record as a test compares it: payload, key, headers in order.
type Expected = (Option<Vec<u8>>, Option<Vec<u8>>, Vec<(String, Vec<u8>)>);

fn expected(i: u32, payload: bool) -> Expected {
    let headers = vec![
        ("rk-schema".to_owned(), b"1".to_vec()),
        ("rk-original-topic".to_owned(), b"schema".to_vec()),
        ("rk-attempts".to_owned(), b"1".to_vec()),
        (
            "rk-error-message".to_owned(),
            format!("failed {i}: \u{e9}").into_bytes(),
        ),
        ("tenant".to_owned(), vec![0, 159, 146, 150, i as u8]),
        // A header named like a reserved field, escaped as `h:key` a field per value.
        ("key".to_owned(), b"not the key".to_vec()),
    ];
    let payload = payload.then(|| format!("{{\"order\":{i}}}\u{ff}").into_bytes());
    (payload, Some(format!("k{i}").into_bytes()), headers)
}

/// The fields the previous release wrote for `record` (fields.rs at rk-schema 1).
fn old_fields((payload, key, headers): &Expected) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut fields = Vec::new();
    if let Some(payload) = payload {
        fields.push((b"payload".to_vec(), payload.clone()));
    }
    if let Some(key) = key {
        fields.push((b"key".to_vec(), key.clone()));
    }
    for (name, value) in headers {
        let name = if name == "payload" || name == "key" || name.starts_with("h:") {
            format!("h:{name}")
        } else {
            name.clone()
        };
        fields.push((name.into_bytes(), value.clone()));
    }
    fields
}

/// A msgpack string, as lua-cmsgpack writes it.
fn msgpack_str(out: &mut Vec<u8>, bytes: &[u8]) {
    match bytes.len() {
        n if n < 32 => out.push(0xa0 | n as u8),
        n if n <= 0xff => out.extend_from_slice(&[0xd9, n as u8]),
        n => {
            out.push(0xda);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(bytes);
}

fn outbound((payload, key, headers): &Expected, due_at_ms: Option<u64>) -> OutboundRecord {
    let mut all = Headers::new();
    for (name, value) in headers {
        all.insert(name.clone(), value.clone());
    }
    if let Some(due) = due_at_ms {
        all.insert("rk-due-at", due.to_string());
    }
    OutboundRecord {
        partition: Some(0),
        key: key.clone().map(Bytes::from),
        payload: payload.clone().map(Bytes::from),
        headers: all,
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_schema_1_then_schema_2_entries_drains_unchanged() {
    let harness = tokio::task::spawn_blocking(RedisHarness::start).await.unwrap();
    let redis = harness.backend.clone();
    let topic = Topic::new(RETRY, TopicRole::Retry { level: 1 });
    redis.create_topic(&topic, 1).await.unwrap();
    let mut conn = harness.connection().await;
    let mut want = Vec::new();

    // Schema 1, as the previous release wrote it: entries in the stream (one with a null
    // payload), and one waiting in the delay set, due now.
    for i in 0..3 {
        let record = expected(i, i != 1);
        let mut add = redis::cmd("XADD");
        add.arg(stream(RETRY, 0)).arg("*");
        for (name, value) in old_fields(&record) {
            add.arg(name).arg(value);
        }
        let _: Value = add.query_async(&mut conn).await.unwrap();
        want.push(record);
    }
    let record = expected(3, true);
    let mut member = Vec::new();
    msgpack_str(&mut member, stream(RETRY, 0).as_bytes());
    msgpack_str(&mut member, b"{schema}:0/schema-billing/1-0");
    for (name, value) in old_fields(&record) {
        msgpack_str(&mut member, &name);
        msgpack_str(&mut member, &value);
    }
    let _: Value = redis::cmd("ZADD")
        .arg(format!("{{{RETRY}}}:delayed"))
        .arg(now_ms())
        .arg(member)
        .query_async(&mut conn)
        .await
        .unwrap();

    // Schema 2, as this release writes it: one due already (straight to the stream), one with
    // a null payload, and one through the delay set.
    for i in 4..6 {
        let record = expected(i, i != 5);
        redis.send(&topic, outbound(&record, None)).await.unwrap();
        want.push(record);
    }
    let packed: Value = redis::cmd("XREVRANGE")
        .arg(stream(RETRY, 0))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let text = format!("{packed:?}");
    assert!(
        text.contains("rk-schema") && text.contains("rk-entry") && !text.contains("rk-attempts"),
        "a packed entry is two fields: {text}"
    );
    let delayed = expected(6, true);
    redis
        .send(&topic, outbound(&delayed, Some(now_ms() + 300)))
        .await
        .unwrap();

    // The schema-1 delay-set member is moved with the first read; order across the two delay
    // sets' entries is by due time, so compare as sets within the moved ones.
    let subscription = Subscription {
        topic: topic.clone(),
        group: RETRY.to_owned(),
    };
    let mut consumer = redis.subscribe(subscription).await.unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got.len() < 7 {
        let fetched = tokio::time::timeout_at(deadline, consumer.next())
            .await
            .expect("every entry within 20 s")
            .unwrap();
        if let Fetched::Record(record) = fetched {
            consumer.ack(record.partition, record.offset).await.unwrap();
            let mut headers: Vec<(String, Vec<u8>)> = record
                .headers
                .iter()
                .map(|(n, v)| (n.to_owned(), v.to_vec()))
                .collect();
            if let Some(at) = headers.iter().position(|(n, _)| n == "rk-due-at") {
                headers.remove(at);
            }
            got.push((
                record.payload.map(|p| p.to_vec()),
                record.key.map(|k| k.to_vec()),
                headers,
            ));
        }
    }
    consumer.close().await.unwrap();
    want.insert(3, expected(3, true));
    want.push(delayed);
    // The stream's own entries in order; the schema-1 delay-set member came after them.
    assert_eq!(got[..3], want[..3], "schema-1 stream entries");
    assert_eq!(got[3..5], want[4..6], "schema-2 stream entries");
    assert_eq!(got[5], want[3], "the schema-1 delay-set member");
    assert_eq!(got[6], want[6], "the schema-2 delay-set member");

    // Browse reads both layouts too (the `retry-kafka dlq` tool reads through it).
    let browsed = redis.read(&topic, &[0]).await.unwrap();
    assert_eq!(browsed.len(), 7);
    for record in &browsed {
        let i = record.key.as_deref().unwrap()[1] - b'0';
        let (payload, _, headers) = expected(u32::from(i), i != 1 && i != 5);
        assert_eq!(record.payload.as_deref(), payload.as_deref(), "entry {i}");
        let kept: Vec<(String, Vec<u8>)> = record
            .headers
            .iter()
            .filter(|(n, _)| *n != "rk-due-at")
            .map(|(n, v)| (n.to_owned(), v.to_vec()))
            .collect();
        assert_eq!(kept, headers, "entry {i}");
    }
}
