use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

// A codec name that does not exist, and one with the wrong case.
#[derive(Event, Serialize, Deserialize)]
#[event(topic = "orders", codec = "avro")]
struct OrderPlaced {
    order_id: u64,
}

#[derive(Event, Serialize, Deserialize)]
#[event(topic = "refunds", codec = "MsgPack")]
struct RefundIssued {
    order_id: u64,
}

// Neither a name nor a path.
#[derive(Event, Serialize, Deserialize)]
#[event(topic = "carts", codec = 3)]
struct CartOpened {
    cart_id: u64,
}

fn main() {}
