//! A worker process for the breaker's process test (`tests/kafka_breaker.rs`): two handlers
//! call one dependency, one behind a circuit breaker, the other without. The dependency is down
//! while the file `$OUTAGE_FLAG` exists.
//!
//! Every attempt appends `handler id attempt outcome` to `$WORKER_LOG`.

use std::path::Path;

use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "proc.payments", key = "id")]
struct Payment {
    id: u64,
}

/// The dependency: down while the flag file exists.
///
/// The guarded handler weighs its last 100 attempts: at 1,000 events a second it opens some
/// 50 ms into the outage. A time window (`window = "10s"`) would weigh the 5 s of successes
/// before it too, and take ~5 s of failures to open: longer than a record needs to walk
/// `["1s", "2s"]` into the dead letters.
fn call_dependency(handler: &str, payment: &Payment, ctx: &Context) -> Result<(), HandlerError> {
    let flag = std::env::var("OUTAGE_FLAG").expect("OUTAGE_FLAG is set");
    let outcome = if Path::new(&flag).exists() {
        Err(HandlerError::transient("payment gateway unavailable"))
    } else {
        Ok(())
    };
    let result = if outcome.is_ok() { "ok" } else { "failed" };
    retry_kafka_suite::worker_log(&format!("{handler} {} {} {result}", payment.id, ctx.attempt()));
    outcome
}

#[retry_handler(group = "proc-guarded", retries = ["1s", "2s"], dlq,
    breaker(failure_rate = 50, window = 100, min_attempts = 20, cool_down = "5s", max_cool_down = "10s"))]
async fn guarded(payment: Payment, ctx: Context) -> Result<(), HandlerError> {
    call_dependency("guarded", &payment, &ctx)
}

#[retry_handler(group = "proc-unguarded", retries = ["1s", "2s"], dlq)]
async fn unguarded(payment: Payment, ctx: Context) -> Result<(), HandlerError> {
    call_dependency("unguarded", &payment, &ctx)
}

#[tokio::main]
async fn main() -> retry_kafka::Result<()> {
    retry_kafka_suite::init_worker_tracing();
    retry_kafka::run().await
}
