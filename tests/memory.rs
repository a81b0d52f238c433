//! The conformance suite on the in-process broker, plus what only virtual time can show.

mod conformance;

use retry_kafka::backend::memory::InMemory;
use retry_kafka::backend::Record;
use retry_kafka::App;

use conformance::{FaultInjection, Harness};

struct Memory {
    broker: InMemory,
}

impl Harness for Memory {
    type Backend = InMemory;

    fn backend(&self) -> InMemory {
        self.broker.clone()
    }

    async fn create_topic(&self, topic: &str, partitions: u32) {
        self.broker.create_topic(topic, partitions);
    }

    async fn records(&self, topic: &str) -> Vec<Record> {
        self.broker.records(topic)
    }

    async fn committed(&self, topic: &str, group: &str) -> Vec<u64> {
        self.broker.committed(topic, group)
    }

    async fn end_offsets(&self, topic: &str) -> Vec<u64> {
        self.broker.end_offsets(topic)
    }
}

impl FaultInjection for Memory {
    async fn fail_next_sends(&self, topic: &str, count: u32) {
        self.broker.fail_next_sends(topic, count);
    }
}

async fn memory() -> Memory {
    Memory {
        broker: InMemory::new(),
    }
}

conformance_suite!(memory);
key_order_suite!(memory);
fault_injection_suite!(memory);

// A hand-off that keeps failing for one partition holds that partition only: the other
// partition's failures are handed on and retried meanwhile. Only the in-process broker can
// fail the writes to one partition of a topic.

use std::sync::Mutex;
use std::time::Duration;

use retry_kafka::headers::Headers;
use retry_kafka::prelude::*;

static SPLIT_SEEN: Mutex<Vec<(u64, u32, u32, tokio::time::Instant)>> = Mutex::new(Vec::new());

#[retry_handler(topic = "mem.split", group = "mem-split", retries = ["50ms"], dlq)]
async fn split(order: conformance::Order, ctx: Context) -> Result<(), HandlerError> {
    SPLIT_SEEN.lock().unwrap().push((
        order.id,
        ctx.partition(),
        ctx.attempt(),
        tokio::time::Instant::now(),
    ));
    if ctx.attempt() == 1 {
        return Err(HandlerError::transient("first attempt fails"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_hand_off_holds_its_partition_and_not_the_others() {
    let broker = InMemory::new();
    broker.create_topic("mem.split", 2);
    let retry_topic = "mem.split.mem-split.retry.1";
    broker.create_topic(retry_topic, 2);
    // Backoff 50+100+200+400+800 ms: partition 0's hand-offs fail for ~1.5 s.
    broker.fail_next_sends_to(retry_topic, 0, 5);
    let app = App::builder()
        .backend(broker.clone())
        .handlers(|spec| spec.group() == "mem-split")
        .build()
        .unwrap();
    let running = app.start().await.unwrap();
    let mut partition_of = std::collections::HashMap::new();
    for id in 0..40 {
        let order = conformance::Order {
            id,
            note: format!("order {id}"),
        };
        let delivered = app
            .producer()
            .send_to("mem.split", &order, Headers::new())
            .await
            .unwrap();
        partition_of.insert(id, delivered.partition);
    }
    let on = |p: u32| partition_of.values().filter(|&&q| q == p).count();
    assert!(
        on(0) > 0 && on(1) > 0,
        "both partitions have orders: {partition_of:?}"
    );

    // Partition 1 goes through level 1 while partition 0's first hand-off still fails.
    conformance::eventually(Duration::from_secs(5), "partition 1's retries", || {
        let seen = SPLIT_SEEN.lock().unwrap();
        seen.iter().filter(|s| s.1 == 1 && s.2 == 2).count() == on(1)
    })
    .await;
    {
        let seen = SPLIT_SEEN.lock().unwrap();
        assert_eq!(
            seen.iter()
                .filter(|s| s.2 == 2 && partition_of[&s.0] == 0)
                .count(),
            0,
            "a retry from the failing partition ran before its hand-off could be written"
        );
        let started_on_0 = seen.iter().filter(|s| s.1 == 0 && s.2 == 1).count();
        assert!(
            started_on_0 < on(0),
            "partition 0 kept starting messages ({started_on_0} of {}) while its hand-off failed",
            on(0)
        );
    }
    assert_eq!(
        broker.committed("mem.split", "mem-split")[0],
        0,
        "partition 0 acknowledged past a failed hand-off"
    );

    conformance::succeeded_eventually(&app, "split", 40, Duration::from_secs(10), "every retry").await;
    running.shutdown().await.unwrap();
    let retried = broker.records(retry_topic);
    assert_eq!(retried.len(), 40, "each failure handed on exactly once");
    for p in 0..2u32 {
        let ids: Vec<u64> = retried
            .iter()
            .filter(|r| r.partition == p)
            .map(|r| {
                serde_json::from_slice::<conformance::Order>(r.payload.as_deref().unwrap())
                    .unwrap()
                    .id
            })
            .collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(
            ids, sorted,
            "partition {p} of the retry level is in failure order"
        );
    }
    assert_eq!(
        broker.committed("mem.split", "mem-split"),
        broker.end_offsets("mem.split")
    );
}
