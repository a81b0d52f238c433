use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

// Built without retry-kafka's `msgpack` feature.
#[derive(Event, Serialize, Deserialize)]
#[event(topic = "orders", codec = "msgpack")]
struct OrderPlaced {
    order_id: u64,
}

fn main() {}
