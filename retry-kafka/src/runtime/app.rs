//! [`App`]: the handlers bound to a backend, what it answers about them, and `run`.

use std::sync::Arc;
use std::time::Duration;

use super::provision::Provisioning;
use super::signals::TerminationSignals;
use crate::backend::{Backend, Topic, TopicRole};
use crate::breaker::Breaker;
use crate::error::{BackendError, Error};
use crate::handlers::HandlerSpec;
use crate::health::{ConsumerHealth, Health};
use crate::policy::{Topology, TopologyPlan};
use crate::producer::Producer;
use crate::shutdown::ShutdownHandle;
use crate::stats::{Counters, Stats};

/// The registered handlers, validated and bound to a backend.
///
/// ```
/// use retry_kafka::prelude::*;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Event, Serialize, Deserialize)]
/// # #[event(topic = "orders", key = "order_id")]
/// # struct OrderPlaced { order_id: u64 }
///
/// #[retry_handler(group = "billing", retries = ["1s"], dlq)]
/// async fn charge(order: OrderPlaced) -> Result<(), HandlerError> { Ok(()) }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> retry_kafka::Result<()> {
/// let app = App::builder().backend(InMemory::new()).build()?;
/// let running = app.start().await?;
/// app.producer().send(&OrderPlaced { order_id: 7 }).await.unwrap();
/// running.shutdown().await
/// # }
/// ```
pub struct App<B: Backend> {
    pub(super) backend: B,
    pub(super) handlers: Vec<AppHandler>,
    pub(super) shutdown: ShutdownHandle,
    pub(super) shutdown_timeout: Duration,
    pub(super) provisioning: Provisioning,
    pub(super) hand_off_window: usize,
    pub(super) health: Health,
    #[cfg(feature = "prometheus")]
    pub(super) metrics_addr: Option<std::net::SocketAddr>,
    pub(super) lag_interval: Option<Duration>,
}

/// One handler of an app: its registration, its topics, its counters and the health of each
/// of its levels' consumers.
pub(super) struct AppHandler {
    pub(super) spec: &'static HandlerSpec,
    /// Its breaker: the one set in code, else the attribute's.
    pub(super) breaker: Option<Breaker>,
    pub(super) topology: Arc<Topology>,
    pub(super) counters: Arc<Counters>,
    /// One per level, the main topic's first.
    pub(super) health: Vec<Arc<ConsumerHealth>>,
}

impl<B: Backend> App<B> {
    /// The handlers this app runs, in the order [`topology`](App::topology) numbers them.
    ///
    /// ```
    /// use retry_kafka::prelude::*;
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Event, Serialize, Deserialize)]
    /// # #[event(topic = "orders")]
    /// # struct OrderPlaced { order_id: u64 }
    /// #[retry_handler(group = "billing", dlq)]
    /// async fn charge(order: OrderPlaced) -> Result<(), HandlerError> { Ok(()) }
    ///
    /// let app = App::builder().backend(InMemory::new()).build()?;
    /// assert_eq!(app.handlers().len(), 1);
    /// assert_eq!(app.handlers().next().unwrap().group(), "billing");
    /// # Ok::<(), retry_kafka::error::ConfigError>(())
    /// ```
    pub fn handlers(&self) -> impl ExactSizeIterator<Item = &'static HandlerSpec> + '_ {
        self.handlers.iter().map(|handler| handler.spec)
    }

    /// The topics of the handler at `index` in [`handlers`](App::handlers).
    pub fn topology(&self, index: usize) -> &Topology {
        &self.handlers[index].topology
    }

    /// A typed producer on this app's backend.
    pub fn producer(&self) -> Producer<B> {
        Producer::new(self.backend.clone())
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Counters of every handler.
    pub fn stats(&self) -> Stats {
        Stats {
            handlers: self.handlers.iter().map(|h| h.counters.snapshot()).collect(),
        }
    }

    /// Messages not yet acknowledged on every handler's main topic and retry levels: 0 when
    /// everything published so far has settled (succeeded, dead-lettered or dropped).
    pub async fn backlog(&self) -> Result<u64, BackendError> {
        let mut backlog = 0;
        for AppHandler { spec, topology, .. } in &self.handlers {
            for level in 0..=topology.retries.len() as u32 {
                let group = topology.consumer_group(spec.group(), level);
                backlog += self
                    .backend
                    .lag(
                        &Topic::new(topology.level(level), TopicRole::of_level(level)),
                        group,
                    )
                    .await?;
            }
        }
        Ok(backlog)
    }

    /// A handle that stops the app from anywhere.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// The health of every consumer: starting until [`start`](App::start) has started it,
    /// then running, then stopped or failed (with why). See [`Health`].
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// What every handler of this app needs: its topics and groups, as
    /// `retry-kafka topics plan` reads them.
    pub fn plan(&self) -> TopologyPlan {
        TopologyPlan::of(self.handlers.iter().map(|h| (h.spec, &*h.topology)))
    }

    /// Prints [`plan`](App::plan) on stdout as one line of JSON: what `retry-kafka topics
    /// plan --program` reads from a program. [`run`](crate::run) does this instead of running
    /// when [`Settings::print_topology`](crate::settings::Settings::print_topology) is set; a
    /// program that builds its app in code asks the same way:
    ///
    /// ```no_run
    /// use retry_kafka::prelude::*;
    /// use retry_kafka::settings::Settings;
    ///
    /// #[tokio::main]
    /// async fn main() -> retry_kafka::Result<()> {
    ///     let app = App::builder().backend(InMemory::new()).build()?;
    ///     if Settings::from_env()?.print_topology {
    ///         app.print_plan();
    ///         return Ok(());
    ///     }
    ///     app.run().await
    /// }
    /// ```
    pub fn print_plan(&self) {
        println!(
            "{}",
            serde_json::to_string(&self.plan()).expect("plain data serializes")
        );
    }

    /// Starts, then runs until SIGINT, SIGTERM or [`ShutdownHandle::shutdown`], then drains.
    /// Reads no environment variable and no program argument: to print the topology instead,
    /// see [`print_plan`](App::print_plan).
    pub async fn run(&self) -> Result<(), Error> {
        // Installed before anything starts, so a signal can never kill a half-started app.
        let mut signals = TerminationSignals::install()?;
        let running = self.start().await?;
        tokio::select! {
            _ = signals.recv() => tracing::info!("signal received; shutting down"),
            _ = self.shutdown.requested() => {}
        }
        running.shutdown().await
    }
}
