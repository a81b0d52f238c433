//! The soak's worker process (`scripts/soak.sh`, `tests/soak.rs`): `retry_kafka::run()` with
//! the backend from the environment, one handler of `soak.events` that does no work of its own,
//! so the framework's path is what runs.
//!
//! Every attempt appends `id attempt ok|failed` to `$WORKER_LOG` with one `write` on a file
//! opened once in append mode, so the line is whole and on disk for the reader even when the
//! process is killed with SIGKILL right after.

use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "soak.events", key = "id")]
struct SoakEvent {
    id: u64,
}

/// Fails the first attempt of every 10th event (one 1 s retry level) and every attempt of the
/// events whose id ends in 37 of each 100 (dead-lettered).
#[retry_handler(group = "soak", retries = ["1s"], dlq, concurrency = 16)]
async fn soak(event: SoakEvent, ctx: Context) -> Result<(), HandlerError> {
    let outcome = if event.id % 100 == 37 {
        Err(HandlerError::permanent("invalid"))
    } else if event.id.is_multiple_of(10) && ctx.attempt() == 1 {
        Err(HandlerError::transient("try again"))
    } else {
        Ok(())
    };
    let word = if outcome.is_ok() { "ok" } else { "failed" };
    retry_kafka_suite::worker_log(&format!("{} {} {word}", event.id, ctx.attempt()));
    outcome
}

#[tokio::main]
async fn main() -> retry_kafka::Result<()> {
    retry_kafka_suite::init_worker_tracing();
    retry_kafka::run().await
}
