use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

// A bad topic name, an unknown option and a wrongly typed value: all three are reported.
#[derive(Event, Serialize, Deserialize)]
#[event(topic = "orders/eu", partitions = 3, key = order_id)]
struct OrderPlaced {
    order_id: u64,
}

fn main() {}
