//! `breaker` alone (the defaults) and with every option: what each registers.

use std::time::Duration;

use retry_kafka::handler::{registered_handlers, Breaker, BreakerWindow, HandlerSpec};
use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(topic = "orders", key = "order_id")]
struct OrderPlaced {
    order_id: u64,
}

#[retry_handler(group = "plain", retries = ["1s"], dlq)]
async fn plain(order: OrderPlaced) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

#[retry_handler(group = "defaults", retries = ["1s"], dlq, breaker)]
async fn defaults(order: OrderPlaced) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

#[retry_handler(group = "tuned", retries = ["1s"], dlq, breaker(failure_rate = 80, window = 50,
    min_attempts = 10, cool_down = "5s", max_cool_down = "1m", probes = 3))]
async fn tuned(order: OrderPlaced) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

#[retry_handler(group = "timed", retries = ["1s"], dlq, breaker(window = "2m"))]
async fn timed(order: OrderPlaced) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

fn spec(name: &str) -> &'static HandlerSpec {
    registered_handlers().find(|s| s.function() == name).unwrap()
}

fn main() {
    assert_eq!(spec("plain").breaker(), None);
    assert_eq!(spec("defaults").breaker(), Some(Breaker::default()));
    let tuned = spec("tuned").breaker().unwrap();
    assert_eq!(
        (tuned.failure_rate(), tuned.window(), tuned.min_attempts(), tuned.probes()),
        (80, BreakerWindow::Attempts(50), 10, 3)
    );
    assert_eq!(
        (tuned.cool_down(), tuned.max_cool_down()),
        (Duration::from_secs(5), Duration::from_secs(60))
    );
    let timed = spec("timed").breaker().unwrap();
    assert_eq!(timed.window(), BreakerWindow::Time(Duration::from_secs(120)));
    assert_eq!(timed.min_attempts(), Breaker::default().min_attempts());
}
