use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(topic = "orders", key = "order_id")]
struct OrderPlaced {
    order_id: u64,
}

// A Vec of events without batch(...).
#[retry_handler(dlq)]
async fn charge_all(orders: Vec<OrderPlaced>) -> Result<(), BatchError> {
    let _ = orders;
    Ok(())
}

// A BatchContext without batch(...).
#[retry_handler(group = "g2", dlq)]
async fn charge(order: OrderPlaced, ctx: BatchContext) -> Result<(), HandlerError> {
    let _ = (order, ctx);
    Ok(())
}

fn main() {}
