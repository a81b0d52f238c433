//! Trace context across hops (the `opentelemetry` feature): one trace shows a message's whole
//! life, main topic, every retry level and the dead-letter queue.
//!
//! A binary of its own: the `tracing` subscriber with the OpenTelemetry layer, which exports
//! into the SDK's in-memory exporter, is global to the process. Tests run in parallel and tell
//! their spans apart by trace id, or by topic.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{SpanId, TraceContextExt as _, TraceId, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use retry_kafka::backend::kafka::Kafka;
use retry_kafka::backend::{Browse as _, Record, Topic, TopicAdmin, TopicRole};
use retry_kafka::headers::{names, Headers};
use retry_kafka::prelude::*;
use retry_kafka::testing::TestApp;
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "traced", key = "id")]
struct Shipment {
    id: u64,
}

#[retry_handler(topic = "traced", group = "tracing", retries = ["100ms", "100ms"], dlq)]
async fn always_fails(_shipment: Shipment) -> Result<(), HandlerError> {
    Err(HandlerError::transient("carrier unavailable"))
}

#[retry_handler(topic = "traced.fresh", group = "tracing", retries = ["100ms"], dlq)]
async fn fails_once(_shipment: Shipment, ctx: Context) -> Result<(), HandlerError> {
    if ctx.attempt() == 1 {
        return Err(HandlerError::transient("first attempt fails"));
    }
    Ok(())
}

/// The spans every test exports, through the pipeline the README shows.
fn exporter() -> &'static InMemorySpanExporter {
    static PIPELINE: OnceLock<(SdkTracerProvider, InMemorySpanExporter)> = OnceLock::new();
    let (_, exporter) = PIPELINE.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("retry-kafka-tests")))
            .init();
        (provider, exporter)
    });
    exporter
}

fn attribute(span: &SpanData, key: &str) -> String {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
        .unwrap_or_else(|| panic!("span {} has no attribute {key}", span.name))
}

/// The finished `message` spans that match, by attempt.
fn message_spans(keep: impl Fn(&SpanData) -> bool) -> Vec<SpanData> {
    let mut spans: Vec<SpanData> = exporter()
        .get_finished_spans()
        .expect("finished spans")
        .into_iter()
        .filter(|span| span.name == "message" && keep(span))
        .collect();
    spans.sort_by_key(|span| attribute(span, "attempt").parse::<u32>().unwrap());
    spans
}

/// The `traceparent` a producer in another service would set: its own span, sampled.
fn incoming(trace: TraceId, span: SpanId) -> Headers {
    let mut headers = Headers::new();
    headers.insert(names::TRACEPARENT, format!("00-{trace}-{span}-01"));
    headers.insert(names::TRACESTATE, "vendor=opaque");
    headers
}

/// The headers the README's producer snippet makes: the current span's context, injected.
fn injected(span: &tracing::Span) -> Headers {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.into_iter().collect()
}

/// Three attempts in the incoming trace, each the child of the hop before it, and a dead letter
/// whose `traceparent` names the last attempt and whose `tracestate` is the incoming one.
fn assert_one_trace(
    trace: TraceId,
    parent: SpanId,
    tracestate: Option<&str>,
    spans: &[SpanData],
    dead: &Record,
) {
    let topics: Vec<String> = spans.iter().map(|s| attribute(s, "topic")).collect();
    assert_eq!(
        topics,
        ["traced", "traced.tracing.retry.1", "traced.tracing.retry.2"],
        "one message span per attempt"
    );
    let mut previous = parent;
    for span in spans {
        assert_eq!(span.span_context.trace_id(), trace);
        assert_eq!(
            span.parent_span_id,
            previous,
            "attempt {} is the child of the hop before it",
            attribute(span, "attempt")
        );
        assert!(span.parent_span_is_remote, "the parent came in a header");
        assert_eq!(attribute(span, "group"), "tracing");
        previous = span.span_context.span_id();
    }
    assert_eq!(
        dead.headers.get_str(names::TRACEPARENT),
        Some(format!("00-{trace}-{previous}-01").as_str()),
        "the dead letter continues the trace from the last attempt"
    );
    assert_eq!(dead.headers.get_str(names::TRACESTATE), tracestate);
    let count = |name| dead.headers.iter().filter(|(n, _)| *n == name).count();
    assert_eq!(count(names::TRACEPARENT), 1);
    assert_eq!(count(names::TRACESTATE), tracestate.is_some() as usize);
}

#[tokio::test(start_paused = true)]
async fn a_dead_lettered_message_is_one_trace_in_process() {
    exporter();
    let trace = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
    let parent = SpanId::from_hex("00f067aa0ba902b7").unwrap();
    let app = TestApp::start_only(|spec| spec.function() == "always_fails").await;
    app.app()
        .producer()
        .send_to("traced", &Shipment { id: 1 }, incoming(trace, parent))
        .await
        .unwrap();
    app.settle().await;
    let dead = app.dead_letters("always_fails");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].context.attempts, 3);
    let spans = message_spans(|s| s.span_context.trace_id() == trace);
    assert_one_trace(trace, parent, Some("vendor=opaque"), &spans, &dead[0].record);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_message_is_one_trace_on_kafka() {
    exporter();
    let kafka = Kafka::embedded().expect("embedded cluster");
    kafka
        .create_topic(&Topic::main("traced"), 1)
        .await
        .expect("create the main topic");
    let app = App::builder()
        .backend(kafka.clone())
        .handlers(|spec| spec.function() == "always_fails")
        .build()
        .unwrap();
    let running = app.start().await.expect("app starts");
    // A producer in this process, in a span of its own.
    let producer = tracing::info_span!("send shipment");
    let producer_context = producer.context().span().span_context().clone();
    let (trace, parent) = (producer_context.trace_id(), producer_context.span_id());
    app.producer()
        .send_to("traced", &Shipment { id: 1 }, injected(&producer))
        .await
        .unwrap();
    drop(producer);
    let deadline = Instant::now() + Duration::from_secs(30);
    let dead = loop {
        let dead = kafka
            .read(&Topic::new("traced.tracing.dlq", TopicRole::DeadLetter), &[])
            .await
            .expect("read the dead-letter queue");
        if !dead.is_empty() {
            break dead;
        }
        assert!(Instant::now() < deadline, "nothing dead-lettered after 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(dead.len(), 1);
    // Each span ends when its handler is done, before its hand-off is written.
    let spans = message_spans(|s| s.span_context.trace_id() == trace);
    assert_one_trace(trace, parent, None, &spans, &dead[0]);
    let producer = exporter()
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .find(|span| span.span_context.span_id() == parent)
        .expect("the producer's span");
    assert_eq!(producer.parent_span_id, SpanId::INVALID);
    running.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_message_without_traceparent_starts_a_trace_its_retry_continues() {
    exporter();
    let app = TestApp::start_only(|spec| spec.function() == "fails_once").await;
    app.app()
        .producer()
        .send_to("traced.fresh", &Shipment { id: 2 }, Headers::new())
        .await
        .unwrap();
    app.settle().await;
    let spans = message_spans(|s| attribute(s, "topic").starts_with("traced.fresh"));
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let (first, retry) = (&spans[0], &spans[1]);
    assert_eq!(attribute(first, "topic"), "traced.fresh");
    assert!(first.span_context.is_valid());
    assert_eq!(first.parent_span_id, SpanId::INVALID, "a root span");
    assert_eq!(attribute(retry, "topic"), "traced.fresh.tracing.retry.1");
    assert_eq!(retry.span_context.trace_id(), first.span_context.trace_id());
    assert_eq!(retry.parent_span_id, first.span_context.span_id());

    let handed_on = app.broker().records("traced.fresh.tracing.retry.1");
    assert_eq!(handed_on.len(), 1);
    assert_eq!(
        handed_on[0].headers.get_str(names::TRACEPARENT),
        Some(
            format!(
                "00-{}-{}-01",
                first.span_context.trace_id(),
                first.span_context.span_id()
            )
            .as_str()
        )
    );
    assert_eq!(
        handed_on[0].headers.get(names::TRACESTATE),
        None,
        "no state to carry"
    );
    app.shutdown().await;
}
