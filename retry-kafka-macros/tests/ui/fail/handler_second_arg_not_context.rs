use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(topic = "orders", key = "order_id")]
struct OrderPlaced {
    order_id: u64,
}

#[retry_handler(dlq)]
async fn charge(order: OrderPlaced, attempt: u32) -> Result<(), HandlerError> {
    let _ = (order, attempt);
    Ok(())
}
fn main() {}
