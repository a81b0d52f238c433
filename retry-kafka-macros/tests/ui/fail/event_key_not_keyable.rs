use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(topic = "orders", key = "lines")]
struct OrderPlaced {
    lines: Vec<String>,
}

fn main() {}
