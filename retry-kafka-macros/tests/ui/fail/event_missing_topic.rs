use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(key = "order_id")]
struct OrderPlaced {
    order_id: u64,
}

fn main() {}
