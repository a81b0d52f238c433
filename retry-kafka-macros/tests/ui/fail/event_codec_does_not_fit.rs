use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

// A serde struct is no protobuf message.
#[derive(Event, Serialize, Deserialize)]
#[event(topic = "orders", codec = "protobuf")]
struct OrderPlaced {
    order_id: u64,
}

// MessagePack goes through serde.
#[derive(Event)]
#[event(topic = "refunds", codec = "msgpack")]
struct RefundIssued {
    order_id: u64,
}

fn main() {}
