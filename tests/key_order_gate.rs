//! `ordering = "key"` beside `rate`, in virtual time (`TestApp`): a held key's records are
//! handed to the held topic, not attempted, so they take no rate token (nor wait on a breaker):
//! other keys' attempts are not delayed behind them.

use std::sync::Mutex;
use std::time::Duration;

use retry_kafka::prelude::*;
use retry_kafka::testing::TestApp;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "kg.moves", key = "account")]
struct Move {
    account: u64,
    seq: u64,
}

/// (account, seq, when) of every success.
static SUCCESSES: Mutex<Vec<(u64, u64, Instant)>> = Mutex::new(Vec::new());

/// Account 0's first move fails once (10 s on level 1): its 20 later moves are held meanwhile.
#[retry_handler(group = "kg-rated", retries = ["10s"], dlq, ordering = "key", rate = "2/s")]
async fn rated(change: Move, ctx: Context) -> Result<(), HandlerError> {
    if (change.account, change.seq, ctx.attempt()) == (0, 0, 1) {
        return Err(HandlerError::transient("account 0 locked"));
    }
    SUCCESSES
        .lock()
        .unwrap()
        .push((change.account, change.seq, Instant::now()));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn held_back_records_take_no_rate_token() {
    let app = TestApp::start_only(|spec| spec.group() == "kg-rated").await;
    let began = Instant::now();
    for seq in 0..=20 {
        app.publish(&Move { account: 0, seq }).await;
    }
    for seq in 0..4 {
        app.publish(&Move { account: 1, seq }).await;
    }
    app.advance(Duration::from_secs(60)).await;
    app.settle().await;

    let successes = SUCCESSES.lock().unwrap().clone();
    assert_eq!(successes.len(), 25, "every move succeeded: {successes:?}");
    // Five attempts before account 1's last (account 0's first and account 1's four) at 2 a
    // second: ~2 s. Had the 20 held-back moves taken tokens, ~12 s.
    let account_1_done = successes
        .iter()
        .filter(|s| s.0 == 1)
        .map(|s| s.2 - began)
        .max()
        .unwrap();
    assert!(
        account_1_done <= Duration::from_secs(3),
        "account 1's moves waited {account_1_done:?}: the held-back ones took rate tokens"
    );
    let account_0: Vec<u64> = successes.iter().filter(|s| s.0 == 0).map(|s| s.1).collect();
    assert_eq!(account_0, (0..=20).collect::<Vec<_>>(), "account 0 in order");
    // Its held moves ran after its first one's retry (10 s), at the rate: ~10 s more.
    let account_0_done = successes
        .iter()
        .filter(|s| s.0 == 0)
        .map(|s| s.2 - began)
        .max()
        .unwrap();
    assert!(
        account_0_done >= Duration::from_secs(10),
        "account 0's held moves waited for its retry: {account_0_done:?}"
    );
}
