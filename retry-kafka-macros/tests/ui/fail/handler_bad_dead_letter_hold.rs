use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(topic = "orders", key = "order_id")]
struct OrderPlaced {
    order_id: u64,
}

#[retry_handler(group = "a", retries = ["1s"], dlq, ordering = "key", on_dead_letter = "hold")]
async fn misspelled(order: OrderPlaced) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

#[retry_handler(group = "b", retries = ["1s"], dlq, on_dead_letter = "hold_key")]
async fn without_key_order(order: OrderPlaced) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

#[retry_handler(group = "c", retries = ["1s"], on_exhausted = "drop", ordering = "key", on_dead_letter = "hold_key")]
async fn nothing_to_replay(order: OrderPlaced) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

fn main() {}
