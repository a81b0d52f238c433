//! [`AppBuilder`]: choosing an [`App`]'s backend, handlers and settings, and validating them.

use std::sync::Arc;
use std::time::Duration;

use super::app::{App, AppHandler};
use super::provision::Provisioning;
use super::validate;
use crate::backend::memory::InMemory;
use crate::backend::Backend;
use crate::breaker::Breaker;
use crate::error::ConfigError;
use crate::handlers::{registered_handlers, HandlerSpec};
use crate::health::{ConsumerHealth, Health};
use crate::policy::TopicNaming;
use crate::shutdown::ShutdownHandle;
use crate::stats::Counters;

/// How long in-flight handlers may run after shutdown is requested.
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Hand-offs each consumer may have under way at once.
const DEFAULT_HAND_OFF_WINDOW: usize = 1024;
/// How often the consumer-lag gauge is refreshed when nothing else is said.
const DEFAULT_LAG_INTERVAL: Duration = Duration::from_secs(15);

/// Chooses the backend and settings of an [`App`].
///
/// ```
/// use std::time::Duration;
/// use retry_kafka::app::{App, TopicNaming};
/// use retry_kafka::backend::memory::InMemory;
///
/// let app = App::builder()
///     .backend(InMemory::new())
///     .handlers(|spec| spec.group() == "billing")
///     .topic_naming(TopicNaming::new("{topic}-{group}-retry-{level}", "{topic}-{group}-dlt").unwrap())
///     .shutdown_timeout(Duration::from_secs(10))
///     .build();
/// // No handler in this doc test is in group "billing":
/// assert!(app.is_err());
/// ```
pub struct AppBuilder<B> {
    backend: B,
    filter: Option<HandlerFilter>,
    naming: TopicNaming,
    shutdown_timeout: Duration,
    provisioning: Provisioning,
    hand_off_window: usize,
    #[cfg(feature = "prometheus")]
    metrics_addr: Option<std::net::SocketAddr>,
    lag_interval: Option<Duration>,
    /// Breakers set in code, by handler name.
    breakers: Vec<(String, Breaker)>,
}

type HandlerFilter = Box<dyn Fn(&HandlerSpec) -> bool + Send + Sync>;

/// The state of an [`AppBuilder`] before a backend is chosen.
pub struct NoBackend;

impl App<InMemory> {
    /// Starts configuring an app.
    pub fn builder() -> AppBuilder<NoBackend> {
        AppBuilder {
            backend: NoBackend,
            filter: None,
            naming: TopicNaming::default(),
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            provisioning: Provisioning::default(),
            hand_off_window: DEFAULT_HAND_OFF_WINDOW,
            #[cfg(feature = "prometheus")]
            metrics_addr: None,
            lag_interval: None,
            breakers: Vec::new(),
        }
    }
}

impl<B> AppBuilder<B> {
    /// The transport to run on.
    pub fn backend<N: Backend>(self, backend: N) -> AppBuilder<N> {
        AppBuilder {
            backend,
            filter: self.filter,
            naming: self.naming,
            shutdown_timeout: self.shutdown_timeout,
            provisioning: self.provisioning,
            hand_off_window: self.hand_off_window,
            #[cfg(feature = "prometheus")]
            metrics_addr: self.metrics_addr,
            lag_interval: self.lag_interval,
            breakers: self.breakers,
        }
    }

    /// Runs only the registered handlers for which `keep` returns true.
    pub fn handlers(mut self, keep: impl Fn(&HandlerSpec) -> bool + Send + Sync + 'static) -> Self {
        self.filter = Some(Box::new(keep));
        self
    }

    /// Gives the handler named `handler` (its function's name, or its full path) a circuit
    /// breaker, or replaces the one its attribute declares: the same settings as
    /// `breaker(...)` ([`Breaker`]), from configuration rather than code. `build` fails naming
    /// the handler when none of that name runs, or the setting out of range.
    ///
    /// ```
    /// use retry_kafka::handler::Breaker;
    /// use retry_kafka::prelude::*;
    /// use std::time::Duration;
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Event, Serialize, Deserialize)]
    /// # #[event(topic = "payments")]
    /// # struct Payment { id: u64 }
    ///
    /// #[retry_handler(group = "ledger", retries = ["10s"], dlq)]
    /// async fn book(payment: Payment) -> Result<(), HandlerError> { Ok(()) }
    ///
    /// # fn main() -> Result<(), retry_kafka::error::ConfigError> {
    /// let breaker = Breaker::default().with_cool_down(Duration::from_secs(60));
    /// let app = App::builder().backend(InMemory::new()).breaker("book", breaker).build()?;
    /// let wrong = App::builder().backend(InMemory::new()).breaker("bok", breaker).build();
    /// assert!(wrong.err().unwrap().to_string().contains("\"bok\""));
    /// # Ok(()) }
    /// ```
    pub fn breaker(mut self, handler: impl Into<String>, breaker: Breaker) -> Self {
        self.breakers.push((handler.into(), breaker));
        self
    }

    /// How retry and dead-letter topics are named.
    pub fn topic_naming(mut self, naming: TopicNaming) -> Self {
        self.naming = naming;
        self
    }

    /// What to do about missing retry and dead-letter topics at start (default: create them).
    pub fn provisioning(mut self, provisioning: Provisioning) -> Self {
        self.provisioning = provisioning;
        self
    }

    /// How many failed messages each consumer may be handing on at once (default 1024).
    ///
    /// A failure's hand-off to the next retry level or the dead-letter queue is started, not
    /// waited for in line: the consumer goes on while the broker acknowledges the write, and a
    /// message is acknowledged once everything before it in its partition has settled. When
    /// this many hand-offs are under way (or waiting to be tried again after an error), the
    /// consumer stops fetching until some finish. Each keeps its message in memory meanwhile.
    /// 0 is taken as 1.
    ///
    /// ```
    /// use retry_kafka::{backend::memory::InMemory, App};
    ///
    /// let builder = App::builder().backend(InMemory::new()).hand_off_window(256);
    /// ```
    pub fn hand_off_window(mut self, window: usize) -> Self {
        self.hand_off_window = window.max(1);
        self
    }

    /// How long in-flight handlers may finish after shutdown is requested (default 30 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Serves `/metrics` (Prometheus), `/healthz` and `/readyz` on `addr` from
    /// [`App::start`] until the app has stopped; [`run`](crate::run) takes it from
    /// `RETRY_KAFKA_METRICS_ADDR`. The app installs the Prometheus recorder as the global
    /// `metrics` recorder (shared by every app of the process); start fails with
    /// [`EndpointError::RecorderInstalled`](crate::error::EndpointError::RecorderInstalled)
    /// when another one is installed. Also turns on the consumer-lag gauge
    /// ([`lag_interval`](AppBuilder::lag_interval)).
    ///
    /// ```
    /// use retry_kafka::{backend::memory::InMemory, App};
    ///
    /// let builder = App::builder()
    ///     .backend(InMemory::new())
    ///     .metrics_addr(([0, 0, 0, 0], 9090).into());
    /// ```
    #[cfg(feature = "prometheus")]
    #[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
    pub fn metrics_addr(mut self, addr: std::net::SocketAddr) -> Self {
        self.metrics_addr = Some(addr);
        self
    }

    /// How often a task of the app asks the backend for each level's consumer lag and sets
    /// the `retry_kafka_consumer_lag` gauge, besides every second while the level settles
    /// messages and for two seconds after its last (so the gauge follows commits within about
    /// 3 s): how stale the gauge can be when nothing settles. Default: every 15 s when
    /// `metrics_addr` is set (feature `prometheus`), never otherwise; set it to report
    /// lag to a `metrics` recorder of your own. `Duration::ZERO` turns it off.
    ///
    /// ```
    /// use std::time::Duration;
    /// use retry_kafka::{backend::memory::InMemory, App};
    ///
    /// let builder = App::builder().backend(InMemory::new()).lag_interval(Duration::from_secs(30));
    /// ```
    pub fn lag_interval(mut self, interval: Duration) -> Self {
        self.lag_interval = Some(interval);
        self
    }
}

impl<B: Backend> AppBuilder<B> {
    /// Collects and validates the handlers. No I/O happens here.
    pub fn build(self) -> Result<App<B>, ConfigError> {
        let specs: Vec<&'static HandlerSpec> = registered_handlers()
            .filter(|spec| self.filter.as_ref().is_none_or(|keep| keep(spec)))
            .collect();
        let topologies = validate::validate(&specs, &self.naming)?;
        let breakers = breakers(&specs, self.breakers)?;
        let handlers: Vec<AppHandler> = specs
            .into_iter()
            .zip(topologies)
            .zip(breakers)
            .map(|((spec, topology), breaker)| AppHandler {
                spec,
                breaker,
                counters: Counters::new(spec),
                // One per consumer: each level's, then the held topic's (key-ordered handlers).
                health: (0..=topology.retries.len() as u32)
                    .map(|level| ConsumerHealth::new(spec.name(), topology.level(level), spec.group(), level))
                    .chain(
                        topology
                            .held
                            .as_deref()
                            .map(|held| ConsumerHealth::new(spec.name(), held, spec.group(), 0)),
                    )
                    .collect(),
                topology: Arc::new(topology),
            })
            .collect();
        let shutdown = ShutdownHandle::default();
        #[cfg(feature = "prometheus")]
        let metrics_on = self.metrics_addr.is_some();
        #[cfg(not(feature = "prometheus"))]
        let metrics_on = false;
        Ok(App {
            health: Health::new(
                handlers.iter().flat_map(|h| h.health.iter().cloned()).collect(),
                shutdown.clone(),
            ),
            #[cfg(feature = "prometheus")]
            metrics_addr: self.metrics_addr,
            lag_interval: self
                .lag_interval
                .or(metrics_on.then_some(DEFAULT_LAG_INTERVAL))
                .filter(|interval| !interval.is_zero()),
            backend: self.backend,
            handlers,
            shutdown,
            shutdown_timeout: self.shutdown_timeout,
            provisioning: self.provisioning,
            hand_off_window: self.hand_off_window,
        })
    }
}

/// Each handler's breaker: the one set in code for it (checked), else its attribute's.
fn breakers(
    specs: &[&'static HandlerSpec],
    set: Vec<(String, Breaker)>,
) -> Result<Vec<Option<Breaker>>, ConfigError> {
    let mut breakers: Vec<Option<Breaker>> = specs.iter().map(|spec| spec.breaker()).collect();
    for (handler, breaker) in set {
        let invalid = |reason: String| ConfigError::Breaker {
            handler: handler.clone(),
            reason,
        };
        breaker
            .check()
            .map_err(|(setting, why)| invalid(format!("{setting} {why}")))?;
        let index = specs
            .iter()
            .position(|spec| spec.name() == handler || spec.function() == handler)
            .ok_or_else(|| invalid("no handler of that name runs in this app".to_owned()))?;
        breakers[index] = Some(breaker);
    }
    Ok(breakers)
}
