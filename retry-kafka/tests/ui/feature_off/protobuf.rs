use retry_kafka::prelude::*;

// Built without retry-kafka's `protobuf` feature.
#[derive(Event)]
#[event(topic = "orders", codec = "protobuf")]
struct OrderPlaced {
    order_id: u64,
}

fn main() {}
