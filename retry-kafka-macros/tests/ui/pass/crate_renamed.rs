//! `crate = "..."` for a user who reaches retry-kafka by another name: here `rk`, and a
//! re-export in a module of the user's own (as a facade crate would have).

extern crate retry_kafka as rk;

use rk::prelude::*;
use serde::{Deserialize, Serialize};

mod facade {
    pub use ::retry_kafka as runtime;
}

#[derive(Event, Serialize, Deserialize)]
#[event(crate = "rk", topic = "orders", key = "order_id")]
pub struct OrderPlaced {
    order_id: u64,
}

#[derive(Event, Serialize, Deserialize)]
#[event(topic = "refunds", crate = "crate::facade::runtime")]
pub struct RefundIssued<T> {
    amount: T,
}

#[retry_handler(crate = "rk", retries = ["1s"], dlq)]
async fn charge(order: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
    let _ = (order.order_id, ctx.attempt());
    Ok(())
}

mod nested {
    use super::RefundIssued;

    #[crate::facade::runtime::retry_handler(crate = "crate::facade::runtime", on_exhausted = "drop")]
    pub async fn refund(refund: RefundIssued<u64>) -> Result<(), crate::facade::runtime::HandlerError> {
        let _ = refund.amount;
        Ok(())
    }
}

fn main() {
    let charge = rk::handler::registered_handlers().find(|s| s.function() == "charge").unwrap();
    assert_eq!((charge.topic(), charge.group(), charge.retries().len()), ("orders", "charge", 1));
    let refund = rk::handler::registered_handlers().find(|s| s.function() == "refund").unwrap();
    assert_eq!((refund.topic(), refund.event_type()), ("refunds", "RefundIssued"));
    assert_eq!(OrderPlaced { order_id: 3 }.key().as_deref(), Some(&b"3"[..]));
}
