use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(topic = "orders", key = "order_id")]
struct OrderPlaced {
    order_id: u64,
}

#[retry_handler(group = "a", rate = "200", dlq)]
async fn no_period(order: OrderPlaced) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

#[retry_handler(group = "b", rate = "0/s", dlq)]
async fn zero(order: OrderPlaced) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

#[retry_handler(group = "c", rate = 200, dlq)]
async fn not_a_string(order: OrderPlaced) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

fn main() {}
