//! Handlers declared in another crate are found once the program references that crate.

// The one line a program needs: without it the crate is not linked and its handlers vanish.
use extern_handlers as _;

use std::time::Duration;

use retry_kafka::testing::TestApp;

#[test]
fn handlers_of_a_referenced_crate_are_registered() {
    let spec = retry_kafka::handler::registered_handlers()
        .find(|spec| spec.name() == "extern_handlers::notify")
        .expect("the other crate's handler is registered");
    assert_eq!((spec.topic(), spec.group()), ("ext.shipments", "ext-notify"));
    assert_eq!(spec.retries().collect::<Vec<_>>(), [Duration::from_secs(1)]);
}

#[tokio::test(start_paused = true)]
async fn and_they_run() {
    let app = TestApp::start().await;
    app.publish(&extern_handlers::Shipped { parcel: "P-1".into() })
        .await;
    app.publish(&extern_handlers::Shipped {
        parcel: String::new(),
    })
    .await;
    app.settle().await;
    let stats = app.stats();
    let stats = stats.handler("extern_handlers::notify").unwrap();
    assert_eq!((stats.succeeded, stats.dead_lettered), (1, 1));
    app.shutdown().await;
}
