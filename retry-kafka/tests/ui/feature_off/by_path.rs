use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

// The codec's path, built without retry-kafka's `msgpack` feature: rustc names the feature.
#[derive(Event, Serialize, Deserialize)]
#[event(topic = "orders", codec = retry_kafka::event::codec::MsgPack)]
struct OrderPlaced {
    order_id: u64,
}

fn main() {}
