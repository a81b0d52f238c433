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
//! cluster.

use std::time::Duration;

use anyhow::{bail, Context as _};
use retry_kafka::backend::Backend as _;
use retry_kafka::kafka::Kafka;
use retry_kafka::prelude::*;
use retry_kafka::Stats;
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
    pub dead_letters: Vec<retry_kafka::backend::Record>,
}

/// The cluster named by `KAFKA_BROKERS`, or an embedded one; says which.
pub fn kafka_from_env() -> anyhow::Result<(Kafka, String)> {
    Ok(match std::env::var(retry_kafka::kafka::BROKERS_ENV) {
        Ok(brokers) => (Kafka::from_env()?, format!("running on the Kafka cluster at {brokers}")),
        Err(_) => (
            Kafka::embedded()?,
            "no KAFKA_BROKERS set, running on an embedded Kafka cluster (librdkafka's in-process mock broker)"
                .to_owned(),
        ),
    })
}

/// Runs the service until every retry has settled.
pub async fn run_demo(kafka: Kafka, orders: u64) -> anyhow::Result<Summary> {
    // The main topic must exist; its retry and dead-letter topics are created to match it.
    kafka.create_topic("orders", 4).await?;
    let app = App::builder().backend(kafka.clone()).build()?;
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
        dead_letters: read_all(&kafka, dead_letter_topic).await?,
    })
}

/// Reads a whole topic from the beginning, as any Kafka client would.
async fn read_all(kafka: &Kafka, topic: &str) -> anyhow::Result<Vec<retry_kafka::backend::Record>> {
    let brokers = kafka.brokers().to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::message::{Headers as _, Message};
        let client: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "quickstart-reader")
            .create()?;
        let timeout = Duration::from_secs(10);
        let partitions = client.fetch_metadata(Some(&topic), timeout)?.topics()[0]
            .partitions()
            .len() as i32;
        let mut records = Vec::new();
        for partition in 0..partitions {
            let (low, high) = client.fetch_watermarks(&topic, partition, timeout)?;
            if high <= low {
                continue;
            }
            let mut list = rdkafka::TopicPartitionList::new();
            list.add_partition_offset(&topic, partition, rdkafka::Offset::Offset(low))?;
            client.assign(&list)?;
            while let Some(message) = client.poll(timeout) {
                let message = message?;
                let headers = message
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default();
                records.push(retry_kafka::backend::Record {
                    partition: partition as u32,
                    offset: message.offset() as u64,
                    timestamp_ms: message.timestamp().to_millis(),
                    key: message.key().map(retry_kafka::Bytes::copy_from_slice),
                    payload: message.payload().map(retry_kafka::Bytes::copy_from_slice),
                    headers,
                });
                if message.offset() + 1 >= high {
                    break;
                }
            }
        }
        anyhow::Ok(records)
    })
    .await?
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (kafka, where_) = kafka_from_env()?;
    println!("retry-kafka quickstart: {where_}");
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into()),
        )
        .init();

    let started = std::time::Instant::now();
    let summary = run_demo(kafka, 300).await?;
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
