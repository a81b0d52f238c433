use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(topic = "orders", key = "order_id")]
enum OrderEvent {
    Placed { order_id: u64 },
    Cancelled { order_id: u64 },
}

fn main() {}
