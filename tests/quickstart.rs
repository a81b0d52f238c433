//! The quickstart runs and its summary holds.

#[allow(dead_code)]
#[path = "../examples/quickstart.rs"]
mod quickstart;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_summary() {
    // The embedded Kafka cluster, as `cargo run --example quickstart` uses with nothing set.
    let kafka = retry_kafka::backend::kafka::Kafka::embedded().expect("embedded cluster");
    let summary = quickstart::run_demo(kafka, 300).await.expect("the demo runs");
    assert_summary(&summary);
}

fn assert_summary(summary: &quickstart::Summary) {
    let billing = summary.stats.handler("charge").expect("charge ran");
    // 300 orders: #13 is permanent, #99 always fails, 6 orders (id % 50 == 7) fail twice and
    // 29 more (id % 10 == 3, not 13) fail once.
    assert_eq!(billing.succeeded, 298);
    assert_eq!(billing.retried, [36, 7, 1]);
    assert_eq!(billing.failed, 29 + 6 * 2 + 4 + 1);
    assert_eq!(billing.dead_lettered, 2);
    assert_eq!(billing.dropped, 0);
    let mut dead: Vec<(String, String, String)> = summary
        .dead_letters
        .iter()
        .map(|r| {
            let h = |n| r.headers.get_str(n).unwrap().to_owned();
            (
                String::from_utf8(r.key.as_deref().unwrap().to_vec()).unwrap(),
                h("rk-attempts"),
                h("rk-error-kind"),
            )
        })
        .collect();
    dead.sort();
    assert_eq!(
        dead,
        [
            ("13".to_owned(), "1".to_owned(), "permanent".to_owned()),
            ("99".to_owned(), "4".to_owned(), "transient".to_owned()),
        ]
    );
}

/// With `REDIS_URL` set the quickstart runs on Redis: the same numbers, the same dead letters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_summary_on_redis() {
    let server = tokio::task::spawn_blocking(retry_kafka_suite::RedisServer::start)
        .await
        .unwrap();
    let redis = retry_kafka::backend::redis::Redis::builder(server.url())
        .build()
        .expect("redis backend");
    let summary = quickstart::run_demo(redis, 300).await.expect("the demo runs");
    assert_summary(&summary);
}
