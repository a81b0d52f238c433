//! The metrics endpoint needs the process's global `metrics` recorder: with another one
//! installed, start fails with a typed error naming the setting, before anything starts. (A
//! binary of its own: the recorder is global.)

use retry_kafka::backend::memory::InMemory;
use retry_kafka::error::{EndpointError, Error};
use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(topic = "recorder.orders")]
struct Order {
    id: u64,
}

#[retry_handler(group = "recorder-billing", dlq)]
async fn bill(_order: Order) -> Result<(), HandlerError> {
    Ok(())
}

#[tokio::test]
async fn another_global_recorder_fails_the_start_naming_the_setting() {
    metrics::set_global_recorder(metrics::NoopRecorder).expect("the first recorder of this process");
    let app = App::builder()
        .backend(InMemory::new())
        .metrics_addr(([127, 0, 0, 1], 0).into())
        .build()
        .expect("valid handlers");
    let error = app.start().await.err().expect("start fails");
    assert!(
        matches!(error, Error::Endpoint(EndpointError::RecorderInstalled)),
        "{error:?}"
    );
    assert_eq!(
        format!("{error:?}"),
        "the metrics endpoint (AppBuilder::metrics_addr or RETRY_KAFKA_METRICS_ADDR) needs its own \
         global metrics recorder, but another one is installed; either unset the endpoint and \
         export with that recorder (the app's metrics go to it), or do not install one"
    );
    // Nothing started: every consumer is still starting.
    let report = app.health().report();
    assert_eq!(report.consumers.len(), 1);
    assert_eq!(
        report.consumers[0].state,
        retry_kafka::app::ConsumerState::Starting
    );

    // Without the endpoint the app runs, its metrics going to the installed recorder.
    let app = App::builder()
        .backend(InMemory::new())
        .build()
        .expect("valid handlers");
    let running = app.start().await.expect("starts without the endpoint");
    assert!(app.health().report().is_ready());
    running.shutdown().await.expect("clean shutdown");
}
