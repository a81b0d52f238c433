use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(topic = "orders", key = "order_id")]
struct OrderPlaced {
    order_id: u64,
}

// A wrongly typed value, an unknown option and a bad duration: all three are reported.
#[retry_handler(topic = orders, colour = "red", timeout = "10q", dlq)]
async fn charge(order: OrderPlaced) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}
fn main() {}
