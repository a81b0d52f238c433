use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(topic = "orders", key = "order_id")]
struct OrderPlaced {
    order_id: u64,
}

struct Billing;

impl Billing {
    #[retry_handler(dlq)]
    async fn charge(&self, order: OrderPlaced) -> Result<(), HandlerError> {
        let _ = order;
        Ok(())
    }
}
fn main() {}
