//! Test your handlers the way they run: on the in-process broker, in virtual time.
//!
//! [`TestApp`] starts the registered handlers on an [`InMemory`] broker. Publish events, let
//! time pass (a `["10s", "1m", "5m"]` chain takes milliseconds under
//! `#[tokio::test(start_paused = true)]`), then assert on what succeeded, what waits on which
//! retry level, and what was dead-lettered with which headers.
//!
//! ```
//! use retry_kafka::prelude::*;
//! use retry_kafka::testing::TestApp;
//! # use serde::{Deserialize, Serialize};
//!
//! #[derive(Event, Serialize, Deserialize)]
//! #[event(topic = "payments", key = "id")]
//! struct Payment { id: u64 }
//!
//! #[retry_handler(group = "ledger", retries = ["10s", "1m"], dlq)]
//! async fn book(payment: Payment) -> Result<(), HandlerError> {
//!     Err(HandlerError::transient("ledger offline"))
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! // In a test: #[tokio::test(start_paused = true)]
//! let app = TestApp::start_only(|spec| spec.function() == "book").await;
//! app.publish(&Payment { id: 1 }).await;
//! app.settle().await; // 10 s + 1 min of virtual time
//! let dead = app.dead_letters("book");
//! assert_eq!(dead.len(), 1);
//! assert_eq!(dead[0].context.attempts, 3);
//! assert_eq!(dead[0].context.error_message, "ledger offline");
//! assert_eq!(app.stats().handler("book").unwrap().retried, [1, 1]);
//! app.shutdown().await;
//! # }
//! ```

use std::time::Duration;

use bytes::Bytes;

use crate::backend::{Delivered, OutboundRecord, Record};
use crate::event::Event;
use crate::handlers::HandlerSpec;
use crate::headers::{FailureContext, Headers};
use crate::policy::Topology;
use crate::runtime::{App, Running};
use crate::stats::Stats;
use crate::InMemory;

/// How long [`TestApp::settle`] waits (in virtual time when the clock is paused).
const SETTLE_LIMIT: Duration = Duration::from_secs(7 * 24 * 3600);

/// A message in a dead-letter queue, with its failure context decoded.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The message as stored: key, payload and headers.
    pub record: Record,
    /// Its `rk-*` headers, decoded.
    pub context: FailureContext,
}

/// Registered handlers running on an in-process broker.
pub struct TestApp {
    app: App<InMemory>,
    running: Option<Running>,
}

impl TestApp {
    /// Runs every registered handler.
    pub async fn start() -> Self {
        Self::start_only(|_| true).await
    }

    /// Runs the registered handlers for which `keep` returns true.
    pub async fn start_only(keep: impl Fn(&HandlerSpec) -> bool + Send + Sync + 'static) -> Self {
        Self::start_with(
            App::builder()
                .backend(InMemory::new())
                .handlers(keep)
                .build()
                .expect("valid handler set"),
        )
        .await
    }

    /// Runs a configured app; its backend must be an [`InMemory`] broker.
    pub async fn start_with(app: App<InMemory>) -> Self {
        let running = app.start().await.expect("start on the in-process broker");
        Self {
            app,
            running: Some(running),
        }
    }

    /// The broker, to publish raw bytes or inspect topics.
    pub fn broker(&self) -> &InMemory {
        self.app.backend()
    }

    /// The app under test.
    pub fn app(&self) -> &App<InMemory> {
        &self.app
    }

    /// Publishes `event` to its topic.
    pub async fn publish<E: Event>(&self, event: &E) -> Delivered {
        self.app
            .producer()
            .send(event)
            .await
            .expect("publish to the in-process broker")
    }

    /// Publishes raw bytes to `topic`, as a foreign client would.
    pub async fn publish_bytes(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: Headers,
    ) -> Delivered {
        let record = OutboundRecord {
            partition: None,
            key: key.map(Bytes::copy_from_slice),
            payload: Some(Bytes::copy_from_slice(payload)),
            headers,
        };
        self.app
            .producer()
            .send_raw(topic, record)
            .await
            .expect("publish to the in-process broker")
    }

    /// Lets `duration` pass (virtual time when paused), running whatever becomes due.
    pub async fn advance(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }

    /// Waits until every handler's main topic and retry levels are fully acknowledged.
    ///
    /// Panics, listing the backlog, if that takes longer than a week of (virtual) time.
    pub async fn settle(&self) {
        let deadline = tokio::time::Instant::now() + SETTLE_LIMIT;
        loop {
            let backlog = self.backlog();
            if backlog.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not settled after {SETTLE_LIMIT:?}: {backlog:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Topics with unacknowledged messages (main topics, retry levels, held topics), with how
    /// many.
    pub fn backlog(&self) -> Vec<(String, u64)> {
        let mut backlog = Vec::new();
        for (index, spec) in self.app.handlers().enumerate() {
            let topology = self.app.topology(index);
            let levels = (0..=topology.retries.len() as u32).map(|level| {
                (
                    topology.level(level),
                    topology.consumer_group(spec.group(), level),
                )
            });
            let held = topology.held.as_deref().map(|held| (held, held));
            for (topic, group) in levels.chain(held) {
                let lag = self.broker().lag_of(topic, group);
                if lag > 0 {
                    backlog.push((topic.to_owned(), lag));
                }
            }
        }
        backlog
    }

    /// Messages waiting on retry level `level` (1-based) of `handler`.
    pub fn waiting(&self, handler: &str, level: u32) -> Vec<Record> {
        let (spec, topology) = self.find(handler);
        let topic = topology.level(level);
        let committed = self
            .broker()
            .committed(topic, topology.consumer_group(spec.group(), level));
        self.broker()
            .records(topic)
            .into_iter()
            .filter(|r| r.offset >= committed.get(r.partition as usize).copied().unwrap_or(0))
            .collect()
    }

    /// Every message in `handler`'s dead-letter queue, oldest first per partition.
    pub fn dead_letters(&self, handler: &str) -> Vec<DeadLetter> {
        let (_, topology) = self.find(handler);
        let topic = topology
            .dead_letter
            .as_deref()
            .unwrap_or_else(|| panic!("handler `{handler}` has no dead-letter queue"));
        self.broker()
            .records(topic)
            .into_iter()
            .map(|record| DeadLetter {
                context: FailureContext::from_headers(&record.headers)
                    .expect("dead letters carry a failure context"),
                record,
            })
            .collect()
    }

    /// Counters of every handler.
    pub fn stats(&self) -> Stats {
        self.app.stats()
    }

    /// Stops the handlers, draining what is in flight.
    pub async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await.expect("clean shutdown");
        }
    }

    fn find(&self, handler: &str) -> (&'static HandlerSpec, &Topology) {
        let mut found = self
            .app
            .handlers()
            .enumerate()
            .filter(|(_, spec)| spec.function() == handler || spec.name() == handler);
        let (index, spec) = found
            .next()
            .unwrap_or_else(|| panic!("no running handler named `{handler}`"));
        assert!(
            found.next().is_none(),
            "several handlers are named `{handler}`; use the full path"
        );
        (spec, self.app.topology(index))
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Without an explicit shutdown, stop the consumers; the runtime's drop aborts them.
        if let Some(running) = &self.running {
            running.shutdown_handle().shutdown();
        }
    }
}
