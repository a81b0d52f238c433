//! Every accepted form of #[retry_handler], checked by what it registers.

use std::time::Duration;

use retry_kafka::prelude::*;
use retry_kafka::handler::{OnExhausted, RetryOrdering};
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(topic = "orders", key = "order_id")]
pub struct OrderPlaced {
    order_id: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("bank unavailable")]
pub struct BankError;

// Event only, defaults everywhere but the required exhaustion policy.
#[retry_handler(dlq)]
async fn minimal(order: OrderPlaced) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

// Every option, a Context, and a user error type converted with Into<HandlerError>.
#[retry_handler(topic = "orders-eu", group = "billing", retries = ["250ms", "10s", "1m30s", "2h"], dlq, timeout = "30s", concurrency = 16)]
pub async fn everything(order: OrderPlaced, ctx: Context) -> Result<(), BankError> {
    let _ = (order, ctx.attempt());
    Err(BankError)
}

// A fixed delay repeated, dropping what is exhausted on purpose, a fully qualified Context.
#[retry_handler(group = "audit", retries = ["30s"; 3], on_exhausted = "drop")]
async fn repeated(_order: OrderPlaced, _ctx: retry_kafka::Context) -> Result<(), std::io::Error> {
    Ok(())
}

// An exponential schedule, capped.
#[retry_handler(group = "backoff", retries = exponential(first = "1s", factor = 3, levels = 5, max = "1m"), on_exhausted = "dlq")]
async fn exponential_backoff(_order: OrderPlaced) -> Result<(), HandlerError> {
    Ok(())
}

// No retries at all: failures go straight to the dead-letter queue.
#[retry_handler(group = "ledger", retries = ["1s"], dlq, ordering = "key", on_dead_letter = "hold_key")]
async fn held_until_resolved(_order: OrderPlaced) -> Result<(), HandlerError> {
    Ok(())
}

#[retry_handler(group = "ledger-released", retries = ["1s"], dlq, ordering = "key", on_dead_letter = "release_key")]
async fn released_on_dead_letter(_order: OrderPlaced) -> Result<(), HandlerError> {
    Ok(())
}

#[retry_handler(group = "no-retries", retries = [], dlq)]
async fn no_retries(_order: OrderPlaced) -> Result<(), HandlerError> {
    Ok(())
}

mod nested {
    use super::OrderPlaced;
    use retry_kafka::{retry_handler, HandlerError};

    #[retry_handler(group = "nested", dlq)]
    pub(crate) async fn r#in(_order: OrderPlaced) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn spec(function: &str) -> &'static retry_kafka::handler::HandlerSpec {
    retry_kafka::handler::registered_handlers().find(|s| s.function() == function).unwrap()
}

fn main() {
    assert_eq!(retry_kafka::handler::registered_handlers().count(), 8);

    let defaults = spec("minimal");
    assert_eq!((defaults.topic(), defaults.group(), defaults.event_type()), ("orders", "minimal", "OrderPlaced"));
    assert_eq!(defaults.retries().len(), 0);
    assert_eq!((defaults.timeout(), defaults.concurrency()), (None, 1));
    assert_eq!(defaults.on_exhausted(), OnExhausted::DeadLetter);
    assert!(defaults.name().ends_with("::minimal"));

    let all = spec("everything");
    assert_eq!((all.topic(), all.group()), ("orders-eu", "billing"));
    assert_eq!(
        all.retries().collect::<Vec<_>>(),
        [Duration::from_millis(250), Duration::from_secs(10), Duration::from_secs(90), Duration::from_secs(7200)]
    );
    assert_eq!((all.timeout(), all.concurrency()), (Some(Duration::from_secs(30)), 16));

    let repeated = spec("repeated");
    assert_eq!(repeated.retries().collect::<Vec<_>>(), [Duration::from_secs(30); 3]);
    assert_eq!(repeated.on_exhausted(), OnExhausted::Drop);

    let exponential = spec("exponential_backoff");
    assert_eq!(
        exponential.retries().map(|d| d.as_secs()).collect::<Vec<_>>(),
        [1, 3, 9, 27, 60]
    );
    assert_eq!(exponential.on_exhausted(), OnExhausted::DeadLetter);

    assert_eq!(spec("held_until_resolved").ordering(), RetryOrdering::KeyUntilResolved);
    assert_eq!(spec("released_on_dead_letter").ordering(), RetryOrdering::Key);
    assert_eq!(spec("minimal").ordering(), RetryOrdering::None);

    assert_eq!(spec("no_retries").retries().len(), 0);
    assert_eq!(spec("in").group(), "nested");

    // The functions stay callable as written.
    let _future = nested::r#in(OrderPlaced { order_id: 1 });
    let _future = minimal(OrderPlaced { order_id: 1 });
    // A Context is made only by the runtime; a handler taking one is still a plain fn.
    let _typed: fn(OrderPlaced, Context) -> _ = everything;
}
