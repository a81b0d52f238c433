use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(topic = "orders", key = "order_id")]
struct OrderPlaced {
    order_id: u64,
}

#[retry_handler(group = "a", dlq, breaker(failure_rate = 150))]
async fn rate_over_100(order: OrderPlaced) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

#[retry_handler(group = "b", dlq, breaker(window = "10"))]
async fn window_without_unit(order: OrderPlaced) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

#[retry_handler(group = "c", dlq, breaker(cool_down = "10m"))]
async fn cool_down_over_its_cap(order: OrderPlaced) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

#[retry_handler(group = "d", dlq, breaker(probe = 2))]
async fn misspelled(order: OrderPlaced) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

#[retry_handler(group = "e", dlq, breaker = true)]
async fn not_a_flag_value(order: OrderPlaced) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

fn main() {}
