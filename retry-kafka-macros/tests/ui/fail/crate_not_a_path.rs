use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(crate = "retry kafka", topic = "orders")]
struct OrderPlaced {
    order_id: u64,
}

#[retry_handler(crate = retry_kafka, dlq)]
async fn charge(order: OrderPlaced) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}
fn main() {}
