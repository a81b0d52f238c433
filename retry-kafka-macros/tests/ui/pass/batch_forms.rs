//! Batch handlers and rate limits: what they register, and that both signatures compile.

use std::time::Duration;

use retry_kafka::handler::{BatchFailures, Rate};
use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(topic = "orders", key = "order_id")]
struct OrderPlaced {
    order_id: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("warehouse unavailable")]
pub struct WarehouseError;

// Events only; a user error type converted into a whole-batch failure.
#[retry_handler(batch(max = 500, linger = "50ms"), retries = ["10s"], dlq)]
async fn store(orders: Vec<OrderPlaced>) -> Result<(), WarehouseError> {
    let _ = orders;
    Err(WarehouseError)
}

// With a BatchContext (fully qualified), per-record failures, a rate and a timeout.
#[retry_handler(group = "ledger", batch(max = 1, linger = "0ms"), rate = "30/m", timeout = "5s", concurrency = 2, dlq)]
async fn book(orders: Vec<OrderPlaced>, ctx: retry_kafka::BatchContext) -> Result<(), BatchError> {
    let mut failures = BatchFailures::new();
    for (index, record) in ctx.iter().enumerate() {
        if record.is_last_attempt() {
            failures.fail(index, HandlerError::permanent("giving up"));
        }
    }
    let _ = orders;
    failures.into_result()
}

// A rate on a one-record handler.
#[retry_handler(group = "paced", rate = "5/10s", dlq)]
async fn paced(order: OrderPlaced) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

fn spec(function: &str) -> &'static retry_kafka::handler::HandlerSpec {
    retry_kafka::handler::registered_handlers().find(|s| s.function() == function).unwrap()
}

fn main() {
    assert_eq!(spec("store").batch(), Some((500, Duration::from_millis(50))));
    assert_eq!(spec("store").rate(), None);
    assert_eq!(spec("book").batch(), Some((1, Duration::ZERO)));
    assert_eq!(spec("book").rate(), Rate::new(30, Duration::from_secs(60)));
    assert_eq!(spec("book").concurrency(), 2);
    assert_eq!(spec("paced").batch(), None);
    assert_eq!(spec("paced").rate().map(|r| r.to_string()), Some("5/10s".into()));
    let _typed: fn(Vec<OrderPlaced>) -> _ = store;
}
