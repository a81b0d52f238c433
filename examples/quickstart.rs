//! An order service in one file: a billing handler whose payment gateway flakes now and then,
//! one order that can never be charged, and retries that settle by themselves.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! It publishes 300 orders, waits until every retry has settled, prints what happened and
//! exits 0. With nothing configured it runs the full Kafka path on an embedded Kafka cluster
//! (librdkafka's in-process mock broker) and says so; with `KAFKA_BROKERS` set it runs on that
//! cluster, with `REDIS_URL` set on that Redis server.

use std::time::Duration;

use anyhow::{bail, Context as _};
use retry_kafka::app::Stats;
use retry_kafka::backend::kafka::Kafka;
use retry_kafka::backend::redis::Redis;
use retry_kafka::backend::{Backend, Browse, Record, Topic, TopicRole};
use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "orders", key = "order_id")]
pub struct OrderPlaced {
    pub order_id: u64,
    pub amount_cents: u64,
    pub customer: String,
}

/// Charges an order. Gateway hiccups are transient (retried after 200 ms, 1 s, 2 s); an order
/// of nothing is a permanent failure and goes straight to the dead-letter queue.
#[retry_handler(group = "billing", retries = ["200ms", "1s", "2s"], dlq, timeout = "5s", concurrency = 8)]
async fn charge(order: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
    if order.amount_cents == 0 {
        return Err(HandlerError::permanent(format!(
            "order {} has nothing to charge",
            order.order_id
        )));
    }
    gateway::charge(order.order_id, order.amount_cents, ctx.attempt()).await?;
    Ok(())
}

/// A payment gateway that fails the way real ones do, but deterministically.
mod gateway {
    use std::time::Duration;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    pub struct GatewayError(pub String);

    pub async fn charge(order_id: u64, _amount_cents: u64, attempt: u32) -> Result<(), GatewayError> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let failing = match order_id {
            99 => true,                         // an account frozen for good: exhausts its retries
            id if id % 50 == 7 => attempt <= 2, // a slow outage: fails twice
            id if id % 10 == 3 => attempt == 1, // a blip: fails once
            _ => false,
        };
        if failing {
            return Err(GatewayError(format!(
                "gateway unavailable for order {order_id} (attempt {attempt})"
            )));
        }
        Ok(())
    }
}

/// What the demo did, for the summary and for the test that checks it.
pub struct Summary {
    pub stats: Stats,
    pub dead_letters: Vec<Record>,
}

/// Where the demo runs: Redis when `REDIS_URL` is set, the Kafka cluster named by
/// `KAFKA_BROKERS`, or an embedded Kafka cluster; the text says which.
pub enum DemoBackend {
    Kafka(Kafka),
    Redis(Redis),
}

pub fn backend_from_env() -> anyhow::Result<(DemoBackend, String)> {
    if let Ok(url) = std::env::var(retry_kafka::settings::vars::REDIS_URL) {
        let redis = Redis::from_env()?;
        let shown = url.split('@').next_back().unwrap_or(&url).to_owned();
        return Ok((DemoBackend::Redis(redis), format!("running on Redis at {shown}")));
    }
    Ok(match std::env::var(retry_kafka::settings::vars::KAFKA_BROKERS) {
        Ok(brokers) => (
            DemoBackend::Kafka(Kafka::from_env()?),
            format!("running on the Kafka cluster at {brokers}"),
        ),
        Err(_) => (
            DemoBackend::Kafka(Kafka::embedded()?),
            "no KAFKA_BROKERS or REDIS_URL set, running on an embedded Kafka cluster (librdkafka's in-process mock broker)"
                .to_owned(),
        ),
    })
}

/// Runs the service until every retry has settled.
pub async fn run_demo<B: Backend + Browse>(backend: B, orders: u64) -> anyhow::Result<Summary> {
    // The main topic must exist; its retry and dead-letter topics are created to match it.
    backend.create_topic(&Topic::main("orders"), 4).await?;
    let app = App::builder().backend(backend.clone()).build()?;
    let running = app.start().await?;

    let producer = app.producer();
    for order_id in 0..orders {
        let amount_cents = if order_id == 13 { 0 } else { 500 + order_id * 7 };
        let order = OrderPlaced {
            order_id,
            amount_cents,
            customer: format!("customer-{}", order_id % 17),
        };
        producer.send(&order).await?;
    }

    // Settled when every level has acknowledged everything published to it.
    let settled = async {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if app.backlog().await? == 0 && app.stats().handler("charge").is_some_and(|s| s.succeeded > 0) {
                return anyhow::Ok(());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), settled)
        .await
        .context("retries did not settle within 120 s")??;
    running.shutdown().await?;

    let topology = app.topology(0);
    let dead_letter_topic = topology
        .dead_letter
        .as_deref()
        .context("billing keeps dead letters")?;
    Ok(Summary {
        stats: app.stats(),
        dead_letters: backend
            .read(&Topic::new(dead_letter_topic, TopicRole::DeadLetter), &[])
            .await?,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (backend, where_) = backend_from_env()?;
    println!("retry-kafka quickstart: {where_}");
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into()),
        )
        .init();

    let started = std::time::Instant::now();
    let summary = match backend {
        DemoBackend::Kafka(kafka) => run_demo(kafka, 300).await?,
        DemoBackend::Redis(redis) => run_demo(redis, 300).await?,
    };
    let Some(billing) = summary.stats.handler("charge") else {
        bail!("the charge handler did not run")
    };

    println!("settled in {:.1} s", started.elapsed().as_secs_f64());
    println!("processed:      {}", billing.succeeded);
    for (index, count) in billing.retried.iter().enumerate() {
        println!("retried at level {}: {count}", index + 1);
    }
    println!("dead-lettered:  {}", billing.dead_lettered);
    for dead in &summary.dead_letters {
        let header = |name| dead.headers.get_str(name).unwrap_or("-");
        println!(
            "  dlq: key={} attempts={} kind={} error={:?}",
            String::from_utf8_lossy(dead.key.as_deref().unwrap_or_default()),
            header("rk-attempts"),
            header("rk-error-kind"),
            header("rk-error-message"),
        );
    }
    Ok(())
}
