//! The README's service, as written there: `main` returns `retry_kafka::Result<()>` from
//! `retry_kafka::run()`. `tests/main_errors.rs` runs it with no backend configured and reads
//! what it prints.

use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "orders", key = "order_id")]
struct OrderPlaced {
    order_id: u64,
    amount_cents: u64,
}

#[retry_handler(topic = "orders", group = "billing", retries = ["10s", "1m", "5m"], dlq)]
async fn charge(order: OrderPlaced, _ctx: Context) -> Result<(), HandlerError> {
    let _ = (order.order_id, order.amount_cents);
    Ok(())
}

#[tokio::main]
async fn main() -> retry_kafka::Result<()> {
    retry_kafka::run().await
}
