use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(topic = "orders", key = "order_id")]
struct OrderPlaced {
    order_id: u64,
}

use std::rc::Rc;

#[retry_handler(dlq)]
async fn charge(order: OrderPlaced) -> Result<(), HandlerError> {
    let shared = Rc::new(order.order_id);
    tokio::task::yield_now().await;
    let _ = shared;
    Ok(())
}
fn main() {}
