//! [`Running`]: a started app's consumer tasks, owned and joined on shutdown.

use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::health::Health;
use crate::shutdown::ShutdownHandle;
use crate::stats::{Counters, Stats};

/// A started [`App`](crate::App): its consumer tasks, owned here and joined on shutdown.
pub struct Running {
    pub(super) tasks: JoinSet<Result<(), Error>>,
    pub(super) shutdown: ShutdownHandle,
    pub(super) counters: Vec<Arc<Counters>>,
    pub(super) health: Health,
    pub(super) services: Services,
    #[cfg(feature = "prometheus")]
    pub(super) metrics_addr: Option<std::net::SocketAddr>,
}

impl Running {
    /// Counters of every handler.
    pub fn stats(&self) -> Stats {
        Stats {
            handlers: self.counters.iter().map(|c| c.snapshot()).collect(),
        }
    }

    /// A handle that stops the app.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// The health of every consumer (the same as [`App::health`](crate::App::health)).
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// The address `/metrics`, `/healthz` and `/readyz` are served on, with the port the
    /// system chose when [`metrics_addr`](crate::app::AppBuilder::metrics_addr) gave port 0; `None`
    /// without an endpoint.
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
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> retry_kafka::Result<()> {
    /// let app = App::builder()
    ///     .backend(InMemory::new())
    ///     .metrics_addr(([127, 0, 0, 1], 0).into())
    ///     .build()?;
    /// let running = app.start().await?;
    /// let addr = running.metrics_addr().unwrap();
    /// assert_ne!(addr.port(), 0);
    /// running.shutdown().await
    /// # }
    /// ```
    #[cfg(feature = "prometheus")]
    #[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr
    }

    /// Requests shutdown and waits until every consumer has drained and left its group.
    pub async fn shutdown(self) -> Result<(), Error> {
        self.shutdown.shutdown();
        self.wait().await
    }

    /// Waits until every consumer has stopped. A consumer that fails stops the others too.
    pub async fn wait(mut self) -> Result<(), Error> {
        let mut first_error = None;
        while let Some(joined) = self.tasks.join_next().await {
            let result = joined.unwrap_or_else(|join| {
                Err(Error::Consumer {
                    topic: "?".into(),
                    group: "?".into(),
                    source: Box::new(join),
                })
            });
            if let Err(error) = result {
                tracing::error!(%error, "consumer stopped; shutting the app down");
                self.shutdown.shutdown();
                first_error.get_or_insert(error);
            }
        }
        // Last, so the drain can be watched and scraped to its end.
        self.services.stop().await;
        first_error.map_or(Ok(()), Err)
    }
}

/// Tasks that serve the app rather than consume: the metrics endpoint and the lag reporter.
/// Stopped once the consumers have; aborted if the app is dropped without stopping.
#[derive(Default)]
pub(super) struct Services {
    pub(super) tasks: JoinSet<()>,
    pub(super) stop: CancellationToken,
}

impl Services {
    pub(super) async fn stop(&mut self) {
        self.stop.cancel();
        while let Some(joined) = self.tasks.join_next().await {
            if let Err(error) = joined {
                tracing::warn!(%error, "a metrics task ended abnormally");
            }
        }
    }
}
