use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(topic = "orders", key = "orderid")]
struct OrderPlaced {
    order_id: u64,
    amount_cents: u64,
}

fn main() {}
