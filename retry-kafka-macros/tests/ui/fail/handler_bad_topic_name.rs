use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(topic = "orders", key = "order_id")]
struct OrderPlaced {
    order_id: u64,
}

#[retry_handler(topic = "orders/eu", group = "billing team", dlq)]
async fn charge(order: OrderPlaced) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}
fn main() {}
