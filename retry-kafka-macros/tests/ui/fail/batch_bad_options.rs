use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(topic = "orders", key = "order_id")]
struct OrderPlaced {
    order_id: u64,
}

#[retry_handler(group = "a", batch(max = 0, linger = "50ms"), dlq)]
async fn zero(orders: Vec<OrderPlaced>) -> Result<(), BatchError> {
    let _ = orders;
    Ok(())
}

#[retry_handler(group = "b", batch(max = 10), dlq)]
async fn no_linger(orders: Vec<OrderPlaced>) -> Result<(), BatchError> {
    let _ = orders;
    Ok(())
}

#[retry_handler(group = "c", batch(max = 10, linger = "soon", size = 3), dlq)]
async fn bad_linger(orders: Vec<OrderPlaced>) -> Result<(), BatchError> {
    let _ = orders;
    Ok(())
}

#[retry_handler(group = "d", batch = 10, dlq)]
async fn not_a_list(orders: Vec<OrderPlaced>) -> Result<(), BatchError> {
    let _ = orders;
    Ok(())
}

fn main() {}
