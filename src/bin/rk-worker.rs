//! A worker process for the process-level Kafka tests (`tests/kafka_processes.rs`): the way a
//! service runs, through `retry_kafka::run()` with `KAFKA_BROKERS` from the environment.
//!
//! Every attempt appends `id attempt outcome` to `$WORKER_LOG`, so a test can tell what was
//! done even after the process was killed with SIGKILL.

use std::time::Duration;

use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "proc.orders", key = "id")]
struct Order {
    id: u64,
}

/// What a successful attempt emits (`Context::emit`) when `WORKER_OUTPUT` is set: the
/// transforming handler of the exactly-once kill loop, whose outputs are counted.
#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "proc.shipments", key = "id")]
struct Shipment {
    id: u64,
}

/// Whether successful attempts emit a [`Shipment`] (`WORKER_OUTPUT` set).
fn emits() -> bool {
    static EMITS: std::sync::LazyLock<bool> =
        std::sync::LazyLock::new(|| std::env::var_os("WORKER_OUTPUT").is_some());
    *EMITS
}

/// How long an attempt takes: `WORKER_HANDLER_MS`, 5 ms unless set (a test of many orders sets
/// 0).
fn handler_time() -> Duration {
    static TIME: std::sync::LazyLock<Duration> = std::sync::LazyLock::new(|| {
        let ms =
            std::env::var("WORKER_HANDLER_MS").map_or(5, |ms| ms.parse().expect("WORKER_HANDLER_MS in ms"));
        Duration::from_millis(ms)
    });
    *TIME
}

/// Fails transiently on the first attempt of every 7th order, permanently for orders ending in
/// 13 of each 50, and takes a few milliseconds (`WORKER_HANDLER_MS`), so a kill lands mid-run.
/// A success emits a shipment when `WORKER_OUTPUT` is set.
#[retry_handler(group = "proc-workers", retries = ["500ms"], dlq)]
async fn work(order: Order, ctx: Context) -> Result<(), HandlerError> {
    let time = handler_time();
    if !time.is_zero() {
        tokio::time::sleep(time).await;
    }
    let outcome = if order.id % 50 == 13 {
        Err(HandlerError::permanent(format!("order {} is invalid", order.id)))
    } else if order.id.is_multiple_of(7) && ctx.attempt() == 1 {
        Err(HandlerError::transient("try again"))
    } else {
        if emits() {
            ctx.emit(&Shipment { id: order.id })?;
        }
        Ok(())
    };
    retry_kafka_suite::worker_log(&format!(
        "{} {} {}",
        order.id,
        ctx.attempt(),
        if outcome.is_ok() { "ok" } else { "failed" }
    ));
    outcome
}

#[tokio::main]
async fn main() -> retry_kafka::Result<()> {
    retry_kafka_suite::init_worker_tracing();
    retry_kafka::run().await
}
