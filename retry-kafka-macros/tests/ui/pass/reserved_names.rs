//! Names the expansions might have used for their own locals are free for the user: a handler
//! called `payload`, `event` or `context`, parameters called `event` and `context`, and items
//! named like the runtime's support functions.

use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(topic = "orders", key = "field")]
pub struct OrderPlaced {
    field: u64,
}

// Same-named items in scope must not capture the expansion's paths.
#[allow(dead_code)]
fn into_outcome() {}
#[allow(dead_code)]
struct HandlerFuture;
#[allow(dead_code)]
fn handler_spec() {}

#[retry_handler(group = "payload", dlq)]
async fn payload(event: OrderPlaced, context: Context) -> Result<(), HandlerError> {
    let _ = (event.field, context.attempt());
    Ok(())
}

#[retry_handler(group = "event", dlq)]
async fn event(payload: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
    let _ = (payload.field, ctx.attempt());
    Ok(())
}

#[retry_handler(group = "context", dlq)]
async fn context(event: OrderPlaced) -> Result<(), HandlerError> {
    let _ = event.field;
    Ok(())
}

#[retry_handler(group = "outcome", dlq)]
async fn outcome(spec: OrderPlaced, outcome: Context) -> Result<(), HandlerError> {
    let _ = (spec.field, outcome.attempt());
    Ok(())
}

fn main() {
    let mut groups: Vec<_> = retry_kafka::handler::registered_handlers().map(|spec| spec.group()).collect();
    groups.sort();
    assert_eq!(groups, ["context", "event", "outcome", "payload"]);
    let key = OrderPlaced { field: 7 }.key();
    assert_eq!(key.as_deref(), Some(&b"7"[..]));
}
