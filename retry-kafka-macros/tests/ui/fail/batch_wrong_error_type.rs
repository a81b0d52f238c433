use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(topic = "orders", key = "order_id")]
struct OrderPlaced {
    order_id: u64,
}

#[retry_handler(batch(max = 10, linger = "5ms"), dlq)]
async fn charge_all(orders: Vec<OrderPlaced>) -> Result<(), i32> {
    let _ = orders;
    Ok(())
}

fn main() {}
