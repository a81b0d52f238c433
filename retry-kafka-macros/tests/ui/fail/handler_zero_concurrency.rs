use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(topic = "orders", key = "order_id")]
struct OrderPlaced {
    order_id: u64,
}

#[retry_handler(dlq, concurrency = 0)]
async fn charge(order: OrderPlaced) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}
fn main() {}
