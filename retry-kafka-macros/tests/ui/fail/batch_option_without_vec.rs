use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(topic = "orders", key = "order_id")]
struct OrderPlaced {
    order_id: u64,
}

// batch(...) on a handler of one event.
#[retry_handler(batch(max = 100, linger = "50ms"), dlq)]
async fn charge(order: OrderPlaced) -> Result<(), BatchError> {
    let _ = order;
    Ok(())
}

// batch(...) with a Context instead of a BatchContext.
#[retry_handler(group = "g2", batch(max = 100, linger = "50ms"), dlq)]
async fn charge_all(orders: Vec<OrderPlaced>, ctx: Context) -> Result<(), BatchError> {
    let _ = (orders, ctx);
    Ok(())
}

fn main() {}
