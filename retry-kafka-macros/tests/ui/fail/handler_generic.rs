use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(topic = "orders", key = "order_id")]
struct OrderPlaced {
    order_id: u64,
}

#[retry_handler(dlq)]
async fn charge<E: Event>(order: E) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}
fn main() {}
