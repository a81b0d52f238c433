//! `App::run` stops on SIGTERM: fetching stops, in-flight work drains, `run` returns Ok.
//! In a binary of its own, so a signal that were not handled could only kill this test.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(topic = "sig.orders")]
struct Order {
    id: u64,
}

static STARTED: AtomicU32 = AtomicU32::new(0);
static FINISHED: AtomicU32 = AtomicU32::new(0);

#[retry_handler(group = "sig", dlq)]
async fn slow(_order: Order) -> Result<(), HandlerError> {
    STARTED.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    FINISHED.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_work_and_run_returns_ok() {
    let broker = InMemory::new();
    let app = App::builder().backend(broker.clone()).build().unwrap();
    let producer = app.producer();
    let run = tokio::spawn(async move { app.run().await });
    producer.send(&Order { id: 1 }).await.unwrap();
    producer.send(&Order { id: 2 }).await.unwrap();
    while STARTED.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let status = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .expect("the `kill` command runs");
    assert!(status.success());

    let result = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("run returns after SIGTERM");
    result.expect("run did not panic").expect("run returns Ok");
    // The first message was in flight and finished; the second was never started.
    assert_eq!(
        (STARTED.load(Ordering::SeqCst), FINISHED.load(Ordering::SeqCst)),
        (1, 1)
    );
    assert_eq!(broker.committed("sig.orders", "sig").iter().sum::<u64>(), 1);
}
