//! A worker process for the key-order storm (`tests/kafka_key_order_storm.rs`): a key-ordered
//! handler run through `retry_kafka::run()`, with `KAFKA_BROKERS` from the environment.
//!
//! Every attempt appends `account seq attempt outcome nanos topic partition offset` to
//! `$WORKER_LOG` (`nanos`: the wall clock, comparable between the workers of one machine), so a
//! test can put every worker's successes in one order even after a process was killed with
//! SIGKILL, and say where an attempt came from when the order breaks.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "proc.postings", key = "account")]
struct Posting {
    account: u64,
    seq: u64,
}

/// Fails transiently on the first attempt of every posting whose seq ends in 2 or 7, and
/// always for account 7's seq 3 (a dead letter, which releases the account's later postings);
/// takes 2 ms, so a kill lands mid-run.
#[retry_handler(group = "proc-ledger", retries = ["500ms"], dlq, ordering = "key")]
async fn post(posting: Posting, ctx: Context) -> Result<(), HandlerError> {
    tokio::time::sleep(Duration::from_millis(2)).await;
    let outcome = if (posting.account, posting.seq) == (7, 3) {
        Err(HandlerError::permanent("posting 7/3 is invalid"))
    } else if posting.seq % 5 == 2 && ctx.attempt() == 1 {
        Err(HandlerError::transient("ledger busy"))
    } else {
        Ok(())
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |t| t.as_nanos());
    retry_kafka_suite::worker_log(&format!(
        "{} {} {} {} {nanos} {} {} {}",
        posting.account,
        posting.seq,
        ctx.attempt(),
        if outcome.is_ok() { "ok" } else { "failed" },
        ctx.topic(),
        ctx.partition(),
        ctx.offset()
    ));
    outcome
}

#[tokio::main]
async fn main() -> retry_kafka::Result<()> {
    retry_kafka_suite::init_worker_tracing();
    retry_kafka::run().await
}
