use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(topic = "orders", key = "order_id")]
struct OrderPlaced {
    order_id: u64,
}

#[retry_handler(group = "a", retries = ["1s"], dlq, ordering = "keys")]
async fn misspelled(order: OrderPlaced) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

#[retry_handler(group = "b", retries = ["1s"], dlq, ordering = key)]
async fn not_a_string(order: OrderPlaced) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

#[retry_handler(group = "c", retries = ["1s"], dlq, ordering = "key", batch(max = 10, linger = "5ms"))]
async fn batch_of_keys(orders: Vec<OrderPlaced>) -> Result<(), BatchError> {
    let _ = orders;
    Ok(())
}

fn main() {}
