//! Every codec on every backend: events published with the `Producer` reach their handler
//! equal, and a payload that does not decode goes to the dead-letter queue byte for byte with
//! `rk-error-kind: decode`, whatever the codec. `conformance_suite!` runs these cases with the
//! others, so each backend's test binary runs them.

use std::any::Any;
use std::fmt::Debug;
use std::sync::Mutex;
use std::time::Duration;

use retry_kafka::headers::Headers;
use retry_kafka::prelude::*;
use retry_kafka::Bytes;
use serde::{Deserialize, Serialize};

use super::{
    assert_fully_committed, assert_undecodable_dead_letter, eventually, publish_raw, records_eventually,
    start, Harness,
};

// ---------------------------------------------------------------------------------------------
// One event type and one handler per codec

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(topic = "conf.codec.json", key = "id", codec = "json")]
pub struct JsonOrder {
    pub id: u64,
    pub note: String,
    pub tags: Vec<String>,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(topic = "conf.codec.msgpack", key = "id", codec = "msgpack")]
pub struct MsgPackOrder {
    pub id: u64,
    pub note: String,
    pub amount: f64,
    pub scan: Option<Vec<u8>>,
}

/// As `prost-build` would generate it from a `.proto` file.
#[derive(Event, Clone, PartialEq, prost::Message)]
#[event(topic = "conf.codec.protobuf", key = "id", codec = "protobuf")]
pub struct ProtoOrder {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, tag = "2")]
    pub note: String,
    #[prost(bytes = "vec", tag = "3")]
    pub scan: Vec<u8>,
    #[prost(string, repeated, tag = "4")]
    pub tags: Vec<String>,
}

#[derive(Event, Debug, Clone, PartialEq)]
#[event(topic = "conf.codec.text", key = "0", codec = "raw")]
pub struct LogLine(pub String);

#[derive(Event, Debug, Clone, PartialEq)]
#[event(topic = "conf.codec.bytes", codec = "raw")]
pub struct Blob(pub Bytes);

#[derive(Event, Debug, Clone, PartialEq)]
#[event(topic = "conf.codec.vec", codec = "raw")]
pub struct Chunk {
    pub data: Vec<u8>,
}

/// What the codec handlers received, by case.
static RECEIVED: Mutex<Vec<(&'static str, Box<dyn Any + Send>)>> = Mutex::new(Vec::new());

fn receive<E: Any + Send>(case: &'static str, event: E) {
    let mut received = RECEIVED.lock().unwrap_or_else(|p| p.into_inner());
    received.push((case, Box::new(event)));
}

fn received<E: Any + Clone>(case: &str) -> Vec<E> {
    let received = RECEIVED.lock().unwrap_or_else(|p| p.into_inner());
    received
        .iter()
        .filter(|(c, _)| *c == case)
        .map(|(_, event)| event.downcast_ref::<E>().expect("the case's type").clone())
        .collect()
}

#[retry_handler(group = "conf-codec-json", retries = ["200ms"], dlq)]
async fn json_target(order: JsonOrder) -> Result<(), HandlerError> {
    receive("json", order);
    Ok(())
}

#[retry_handler(group = "conf-codec-msgpack", retries = ["200ms"], dlq)]
async fn msgpack_target(order: MsgPackOrder) -> Result<(), HandlerError> {
    receive("msgpack", order);
    Ok(())
}

#[retry_handler(group = "conf-codec-protobuf", retries = ["200ms"], dlq)]
async fn protobuf_target(order: ProtoOrder) -> Result<(), HandlerError> {
    receive("protobuf", order);
    Ok(())
}

#[retry_handler(group = "conf-codec-text", retries = ["200ms"], dlq)]
async fn text_target(line: LogLine) -> Result<(), HandlerError> {
    receive("text", line);
    Ok(())
}

#[retry_handler(group = "conf-codec-bytes", retries = ["200ms"], dlq)]
async fn bytes_target(blob: Blob) -> Result<(), HandlerError> {
    receive("bytes", blob);
    Ok(())
}

#[retry_handler(group = "conf-codec-vec", retries = ["200ms"], dlq)]
async fn vec_target(chunk: Chunk) -> Result<(), HandlerError> {
    receive("vec", chunk);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The case every codec runs

/// Publishes `events` with the producer and `poison` (bytes this codec cannot decode, when
/// there are any) as raw bytes; every event reaches the handler equal, the poison is the one
/// dead letter, byte for byte, with `rk-error-kind: decode` and no retry, and the main topic is
/// fully acknowledged.
async fn round_trip<H, E>(
    harness: &H,
    case: &'static str,
    group: &'static str,
    events: &[E],
    poison: Option<&[u8]>,
) where
    H: Harness,
    E: Event + Any + Clone + PartialEq + Debug,
{
    harness.create_topic(E::TOPIC, 2).await;
    let (app, running) = start(harness, group).await;
    let mut headers = Headers::new();
    headers.insert("tenant", "acme");
    let poisoned = match poison {
        Some(poison) => Some(publish_raw(&app, E::TOPIC, b"poison-key", poison, headers).await),
        None => None,
    };
    for event in events {
        app.producer().send(event).await.expect("publish");
    }

    eventually(
        Duration::from_secs(20),
        &format!("{} {case} events at the handler", events.len()),
        || received::<E>(case).len() >= events.len(),
    )
    .await;
    let dead_letter_queue = format!("{}.{group}.dlq", E::TOPIC);
    if let (Some(poison), Some(sent)) = (poison, poisoned) {
        let dead = records_eventually(harness, &dead_letter_queue, 1).await;
        assert_undecodable_dead_letter(harness, &dead[0], poison, &sent, group).await;
    }
    running.shutdown().await.unwrap();
    assert_fully_committed(harness, E::TOPIC, group).await;

    // Equal values, each once; partitions may interleave them.
    let got = received::<E>(case);
    assert_eq!(got.len(), events.len(), "{got:#?}");
    for event in events {
        assert!(got.contains(event), "{event:?} not received: {got:#?}");
    }
    if poison.is_none() {
        assert!(harness.records(&dead_letter_queue).await.is_empty());
    }
}

pub async fn json_events_round_trip_and_undecodable_ones_are_dead_lettered<H: Harness>(harness: &H) {
    let events: Vec<JsonOrder> = (0..4)
        .map(|id| JsonOrder {
            id,
            note: format!("order {id} \u{2713}"),
            tags: vec!["gift".into(); id as usize],
        })
        .collect();
    // Cut short, as a producer that died mid-write leaves it.
    round_trip(
        harness,
        "json",
        "conf-codec-json",
        &events,
        Some(br#"{"id":1,"no"#),
    )
    .await;
}

pub async fn msgpack_events_round_trip_and_undecodable_ones_are_dead_lettered<H: Harness>(harness: &H) {
    let events: Vec<MsgPackOrder> = (0..4)
        .map(|id| MsgPackOrder {
            id,
            note: format!("order {id} \u{2713}"),
            amount: id as f64 * 1.25,
            scan: (id % 2 == 0).then(|| vec![0, 0xff, id as u8]),
        })
        .collect();
    // A producer that wrote JSON onto a MessagePack topic.
    let json = serde_json::to_vec(&events[1]).unwrap();
    round_trip(harness, "msgpack", "conf-codec-msgpack", &events, Some(&json)).await;
}

pub async fn protobuf_events_round_trip_and_undecodable_ones_are_dead_lettered<H: Harness>(harness: &H) {
    let events: Vec<ProtoOrder> = (0..4)
        .map(|id| ProtoOrder {
            id,
            note: format!("order {id} \u{2713}"),
            scan: vec![0, 0xff, id as u8],
            tags: vec!["gift".into(); id as usize],
        })
        .collect();
    // A message cut short: its last field says 4 bytes and has 3.
    let mut truncated = events[3].encode().unwrap();
    truncated.pop();
    round_trip(
        harness,
        "protobuf",
        "conf-codec-protobuf",
        &events,
        Some(&truncated),
    )
    .await;
}

pub async fn raw_text_events_round_trip_and_invalid_utf8_is_dead_lettered<H: Harness>(harness: &H) {
    let events = [
        LogLine("GET /orders 200".into()),
        LogLine("POST /caf\u{e9} 201 \u{2713}".into()),
        LogLine("a line\nand another".into()),
    ];
    // "café" in Latin-1: not UTF-8.
    round_trip(
        harness,
        "text",
        "conf-codec-text",
        &events,
        Some(b"GET /caf\xe9 200"),
    )
    .await;
}

pub async fn raw_bytes_events_round_trip_whatever_the_bytes<H: Harness>(harness: &H) {
    let events = [
        Blob(Bytes::from_static(b"\x89PNG\r\n\x1a\n\x00\x00")),
        Blob(Bytes::from_static(b"\xff\xfe not text")),
        Blob(Bytes::from_static(b"{\"id\":1}")),
    ];
    round_trip(harness, "bytes", "conf-codec-bytes", &events, None).await;
}

pub async fn raw_vec_events_round_trip_whatever_the_bytes<H: Harness>(harness: &H) {
    let events = [
        Chunk {
            data: vec![0, 1, 2, 0xff],
        },
        Chunk {
            data: b"caf\xe9".to_vec(),
        },
    ];
    round_trip(harness, "vec", "conf-codec-vec", &events, None).await;
}
