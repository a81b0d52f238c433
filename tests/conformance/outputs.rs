//! A handler's outputs (`Context::emit`) on every backend: written when the attempt succeeds,
//! never when it fails, byte for byte, keyed, with their headers; a context kept past its
//! attempt refuses to emit. With Kafka's exactly-once they go through the consumer's
//! transaction; elsewhere the runtime publishes them: the same case holds for both.

use std::sync::Mutex;
use std::time::Duration;

use retry_kafka::handler::EmitError;
use retry_kafka::headers::Headers;
use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

use super::{assert_fully_committed, header, publish, records_eventually, start, Harness, Order};

/// What the output handler emits for each order, twice: to its own topic and to an audit
/// topic with a header.
#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(topic = "conf.emit.out", key = "id")]
pub struct Invoice {
    pub id: u64,
    pub attempt: u32,
    pub part: u32,
}

/// The context of order 4's attempt, kept past it.
static KEPT: Mutex<Option<Context>> = Mutex::new(None);

#[retry_handler(topic = "conf.emit", group = "conf-emit", retries = ["100ms"], dlq, concurrency = 2)]
async fn emit_invoices(order: Order, ctx: Context) -> Result<(), HandlerError> {
    let invoice = |part| Invoice {
        id: order.id,
        attempt: ctx.attempt(),
        part,
    };
    ctx.emit(&invoice(0))?;
    let mut headers = Headers::new();
    headers.insert("part", "1");
    ctx.emit_to("conf.emit.audit", &invoice(1), headers)?;
    if order.id.is_multiple_of(3) && ctx.attempt() == 1 {
        // What it emitted is not written: its retry emits again.
        return Err(HandlerError::transient(
            "the first attempt of every third order fails",
        ));
    }
    if order.id == 4 {
        *KEPT.lock().unwrap() = Some(ctx.clone());
    }
    Ok(())
}

pub async fn a_handlers_outputs_are_written_once_when_its_attempt_succeeds<H: Harness>(harness: &H) {
    harness.create_topic("conf.emit", 2).await;
    harness.create_topic("conf.emit.out", 2).await;
    harness.create_topic("conf.emit.audit", 1).await;
    let (app, running) = start(harness, "conf-emit").await;
    for id in 1..=12 {
        publish(&app, "conf.emit", &super::order(id)).await;
    }
    let out = records_eventually(harness, "conf.emit.out", 12).await;
    let audit = records_eventually(harness, "conf.emit.audit", 12).await;
    // Nothing more comes: a failed attempt's outputs were never written.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(harness.records("conf.emit.out").await.len(), 12);
    assert_eq!(harness.records("conf.emit.audit").await.len(), 12);
    running.shutdown().await.unwrap();
    assert_fully_committed(harness, "conf.emit", "conf-emit").await;
    assert_eq!(app.stats().handler("emit_invoices").unwrap().succeeded, 12);

    let mut ids = Vec::new();
    for (record, part) in out.iter().map(|r| (r, 0)).chain(audit.iter().map(|r| (r, 1))) {
        let invoice = Invoice::decode(record.payload.as_deref().unwrap()).expect("an invoice");
        let attempt = if invoice.id.is_multiple_of(3) { 2 } else { 1 };
        let expected = Invoice {
            id: invoice.id,
            attempt,
            part,
        };
        assert_eq!(invoice, expected, "written by the attempt that succeeded");
        assert_eq!(
            record.payload.as_deref(),
            Some(&expected.encode().unwrap()[..]),
            "byte for byte"
        );
        assert_eq!(record.key.as_deref(), Some(invoice.id.to_string().as_bytes()));
        assert_eq!(header(record, "part"), (part == 1).then_some("1"));
        if part == 0 {
            ids.push(invoice.id);
        }
    }
    ids.sort_unstable();
    assert_eq!(ids, (1..=12).collect::<Vec<_>>(), "each order's output once");

    let kept = KEPT.lock().unwrap().take().expect("order 4's context was kept");
    let late = Invoice {
        id: 4,
        attempt: 9,
        part: 0,
    };
    assert!(matches!(kept.emit(&late), Err(EmitError::AttemptOver)));
}
