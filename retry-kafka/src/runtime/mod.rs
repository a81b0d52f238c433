//! `run()` and [`App`]: collect the handlers, validate them, start one consumer per topic
//! level, and shut down gracefully.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, Subscription, Topic, TopicRole};
use crate::config::BackendChoice;
use crate::error::{BackendError, ConfigError, Error};
use crate::handlers::{registered_handlers, HandlerSpec};
use crate::health::{ConsumerHealth, Health};
use crate::metrics::LevelMetrics;
use crate::policy::{RetryPolicy, TopicNaming, Topology, TopologyPlan};
use crate::producer::Producer;
use crate::rate::AttemptRate;
use crate::stats::{Counters, Stats};
use crate::InMemory;

mod consumer;
#[cfg(feature = "prometheus")]
mod endpoint;
mod provision;
mod validate;

pub use provision::Provisioning;

/// How long in-flight handlers may run after shutdown is requested.
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Hand-offs each consumer may have under way at once.
const DEFAULT_HAND_OFF_WINDOW: usize = 1024;

/// Environment variable that picks the backend for [`run`].
pub const BACKEND_ENV: &str = "RETRY_KAFKA_BACKEND";
/// Environment variable with the address [`run`] serves `/metrics`, `/healthz` and `/readyz`
/// on (feature `prometheus`), e.g. `0.0.0.0:9090`. See [`AppBuilder::metrics_addr`].
pub const METRICS_ADDR_ENV: &str = "RETRY_KAFKA_METRICS_ADDR";
/// How often the consumer-lag gauge is refreshed when nothing else is said.
const DEFAULT_LAG_INTERVAL: Duration = Duration::from_secs(15);

/// Set to `1` (or pass `--retry-kafka-topology` as the program's first argument), and [`run`]
/// and [`App::run`] print the program's [`TopologyPlan`] as JSON on stdout and return at once,
/// connecting to nothing. This is how `retry-kafka topics plan --program ./my-service` learns
/// the handlers of a binary it did not build.
pub const TOPOLOGY_ENV: &str = "RETRY_KAFKA_PRINT_TOPOLOGY";

/// Runs every registered handler until SIGINT or SIGTERM, on the backend the environment names.
///
/// | setting | backend |
/// |---|---|
/// | `KAFKA_BROKERS=host:9092,...` | Kafka (retry and DLQ topics on `KAFKA_RETRY_BROKERS` if set) |
/// | `RETRY_KAFKA_BACKEND=kafka` | Kafka, and `KAFKA_BROKERS` must be set |
/// | `RETRY_KAFKA_BACKEND=kafka-embedded` | an embedded Kafka cluster in this process (demos) |
/// | `REDIS_URL=redis://host:6379` | Redis Streams |
/// | `RETRY_KAFKA_BACKEND=redis` | Redis Streams, and `REDIS_URL` must be set |
/// | `RETRY_KAFKA_BACKEND=kafka+redis` | main topics on Kafka, retries and dead letters on Redis ([`Tiered`](crate::backend::Tiered)) |
/// | `RETRY_KAFKA_BACKEND=memory` | the in-process broker (demos) |
///
/// With the `prometheus` feature, `RETRY_KAFKA_METRICS_ADDR=0.0.0.0:9090` serves `/metrics`,
/// `/healthz` and `/readyz` there ([`AppBuilder::metrics_addr`]).
///
/// The embedded choices are explicit: nothing survives the process, and a warning says so.
/// With no backend configured `run()` fails at start, naming the settings; it never falls back
/// silently. Use [`App::builder`] to pass a backend and settings in code.
///
/// ```no_run
/// #[tokio::main]
/// async fn main() -> retry_kafka::Result<()> {
///     retry_kafka::run().await
/// }
/// ```
pub async fn run() -> crate::Result<()> {
    if crate::config::topology_requested()? {
        // No backend is needed to name topics: the program may run without its settings here.
        return App::builder().backend(InMemory::new()).build()?.run().await;
    }
    match BackendChoice::from_env()? {
        BackendChoice::Memory => {
            tracing::warn!(
                "{BACKEND_ENV}=memory: running on the in-process broker; nothing survives this process"
            );
            run_on(InMemory::new()).await
        }
        #[cfg(feature = "kafka")]
        BackendChoice::KafkaEmbedded => {
            tracing::warn!("{BACKEND_ENV}=kafka-embedded: running on an in-process Kafka cluster; nothing survives this process");
            run_on(crate::kafka::Kafka::embedded()?).await
        }
        #[cfg(feature = "kafka")]
        BackendChoice::Kafka => run_on(crate::kafka::Kafka::from_env()?).await,
        #[cfg(feature = "redis")]
        BackendChoice::Redis => run_on(crate::redis::Redis::from_env()?).await,
        #[cfg(all(feature = "kafka", feature = "redis"))]
        BackendChoice::KafkaRedis => {
            let backend = crate::backend::Tiered::new(
                crate::kafka::Kafka::from_env()?,
                crate::redis::Redis::from_env()?,
            );
            run_on(backend).await
        }
        #[cfg(all(feature = "kafka", feature = "postgres"))]
        BackendChoice::KafkaPostgres => {
            let backend = crate::backend::Tiered::new(
                crate::kafka::Kafka::from_env()?,
                crate::postgres::Postgres::from_env()?,
            );
            run_on(backend).await
        }
        #[cfg(all(feature = "redis", feature = "postgres"))]
        BackendChoice::RedisPostgres => {
            let backend = crate::backend::Tiered::new(
                crate::redis::Redis::from_env()?,
                crate::postgres::Postgres::from_env()?,
            );
            run_on(backend).await
        }
    }
}

/// Every registered handler on `backend`, until a signal.
async fn run_on<B: Backend>(backend: B) -> crate::Result<()> {
    let metrics_addr = crate::config::metrics_addr()?;
    let builder = App::builder().backend(backend);
    #[cfg(feature = "prometheus")]
    let builder = match metrics_addr {
        Some(addr) => builder.metrics_addr(addr),
        None => builder,
    };
    #[cfg(not(feature = "prometheus"))]
    debug_assert!(metrics_addr.is_none(), "refused by config::metrics_addr");
    builder.build()?.run().await
}

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
}

type HandlerFilter = Box<dyn Fn(&HandlerSpec) -> bool + Send + Sync>;

/// The state of an [`AppBuilder`] before a backend is chosen.
pub struct NoBackend;

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
    backend: B,
    handlers: Vec<&'static HandlerSpec>,
    topologies: Vec<Arc<Topology>>,
    counters: Vec<Arc<Counters>>,
    shutdown: ShutdownHandle,
    shutdown_timeout: Duration,
    provisioning: Provisioning,
    hand_off_window: usize,
    /// One per handler, one per level in each.
    consumer_health: Vec<Vec<Arc<ConsumerHealth>>>,
    health: Health,
    #[cfg(feature = "prometheus")]
    metrics_addr: Option<std::net::SocketAddr>,
    lag_interval: Option<Duration>,
}

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
        }
    }

    /// Runs only the registered handlers for which `keep` returns true.
    pub fn handlers(mut self, keep: impl Fn(&HandlerSpec) -> bool + Send + Sync + 'static) -> Self {
        self.filter = Some(Box::new(keep));
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
    /// [`App::start`] until the app has stopped; [`run`] takes it from
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
    /// the `retry_kafka_consumer_lag` gauge. Default: every 15 s when
    /// [`metrics_addr`](AppBuilder::metrics_addr) is set, never otherwise; set it to report
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
        let handlers: Vec<&'static HandlerSpec> = registered_handlers()
            .filter(|spec| self.filter.as_ref().is_none_or(|keep| keep(spec)))
            .collect();
        let topologies = validate::validate(&handlers, &self.naming)?;
        let consumer_health: Vec<Vec<Arc<ConsumerHealth>>> = handlers
            .iter()
            .zip(&topologies)
            .map(|(spec, topology)| {
                (0..=topology.retries.len() as u32)
                    .map(|level| ConsumerHealth::new(spec.name(), topology.level(level), spec.group(), level))
                    .collect()
            })
            .collect();
        let shutdown = ShutdownHandle::default();
        #[cfg(feature = "prometheus")]
        let metrics_on = self.metrics_addr.is_some();
        #[cfg(not(feature = "prometheus"))]
        let metrics_on = false;
        Ok(App {
            health: Health::new(
                consumer_health.iter().flatten().cloned().collect(),
                shutdown.clone(),
            ),
            consumer_health,
            #[cfg(feature = "prometheus")]
            metrics_addr: self.metrics_addr,
            lag_interval: self
                .lag_interval
                .or(metrics_on.then_some(DEFAULT_LAG_INTERVAL))
                .filter(|interval| !interval.is_zero()),
            backend: self.backend,
            counters: handlers.iter().map(|spec| Counters::new(spec)).collect(),
            handlers,
            topologies: topologies.into_iter().map(Arc::new).collect(),
            shutdown,
            shutdown_timeout: self.shutdown_timeout,
            provisioning: self.provisioning,
            hand_off_window: self.hand_off_window,
        })
    }
}

impl<B: Backend> App<B> {
    /// The handlers this app runs.
    pub fn handlers(&self) -> &[&'static HandlerSpec] {
        &self.handlers
    }

    /// The topics of the handler at `index` in [`handlers`](App::handlers).
    pub fn topology(&self, index: usize) -> &Topology {
        &self.topologies[index]
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
            handlers: self.counters.iter().map(|c| c.snapshot()).collect(),
        }
    }

    /// Messages not yet acknowledged on every handler's main topic and retry levels: 0 when
    /// everything published so far has settled (succeeded, dead-lettered or dropped).
    pub async fn backlog(&self) -> Result<u64, BackendError> {
        let mut backlog = 0;
        for (spec, topology) in self.handlers.iter().zip(&self.topologies) {
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

    /// Creates the topics, joins every group and starts the consumers; returns once all run.
    pub async fn start(&self) -> Result<Running, Error> {
        // First, so probes answer while topics are provisioned and groups joined, and so the
        // level handles below register with the recorder.
        let mut services = Services::default();
        #[cfg(feature = "prometheus")]
        let mut metrics_addr = None;
        #[cfg(feature = "prometheus")]
        if let Some(addr) = self.metrics_addr {
            let recorder = endpoint::install_recorder()?;
            let listener = endpoint::bind(addr).await?;
            let bound = listener.local_addr().unwrap_or(addr);
            metrics_addr = Some(bound);
            tracing::info!(addr = %bound, "serving /metrics, /healthz and /readyz");
            let (health, stop) = (self.health.clone(), services.stop.clone());
            services
                .tasks
                .spawn(endpoint::serve(listener, recorder, health, stop));
        }
        // Help texts for whichever recorder is installed (ours above, or the application's).
        crate::metrics::describe();
        for topology in &self.topologies {
            provision::provision(&self.backend, topology, self.provisioning).await?;
        }
        let shutdown = Shutdown {
            handle: self.shutdown.clone(),
            timeout: self.shutdown_timeout,
        };
        let mut levels = Vec::new();
        let mut lags = Vec::new();
        for (((spec, topology), counters), health) in self
            .handlers
            .iter()
            .zip(&self.topologies)
            .zip(&self.counters)
            .zip(&self.consumer_health)
        {
            let policy = Arc::new(RetryPolicy::of(spec));
            let main_topic: Arc<str> = topology.main.as_str().into();
            // One limiter for all of the handler's levels: the rate caps its attempts in all.
            let rate = spec.rate().map(|rate| Arc::new(AttemptRate::new(rate)));
            for level in 0..=policy.levels() {
                let topic = topology.level(level);
                let seam_topic = Topic::new(topic, TopicRole::of_level(level));
                let consumer = self
                    .backend
                    .subscribe(Subscription {
                        topic: seam_topic.clone(),
                        group: topology.consumer_group(spec.group(), level).to_owned(),
                    })
                    .await?;
                // Registered only when reported: a gauge never set would export a false 0.
                if self.lag_interval.is_some() {
                    lags.push(Lag {
                        topic: seam_topic,
                        group: topology.consumer_group(spec.group(), level).to_owned(),
                        gauge: crate::metrics::lag_gauge(&main_topic, spec.group(), level),
                    });
                }
                let level = consumer::Level {
                    hand_off_window: self.hand_off_window,
                    spec,
                    policy: policy.clone(),
                    topology: topology.clone(),
                    level,
                    topic: topic.into(),
                    main_topic: main_topic.clone(),
                    shutdown: shutdown.clone(),
                    rate: rate.clone(),
                    metrics: Arc::new(LevelMetrics::new(
                        &main_topic,
                        spec.group(),
                        level,
                        counters.clone(),
                        health[level as usize].clone(),
                    )),
                };
                levels.push((level, consumer));
            }
        }
        let mut tasks = JoinSet::new();
        for (level, consumer) in levels {
            let (topic, group) = (level.topic.to_string(), level.spec.group().to_owned());
            let metrics = level.metrics.clone();
            metrics.health.running();
            tasks.spawn(async move {
                let unfinished = StopReport(Some(metrics));
                let result = level.run(consumer).await;
                unfinished.finished(&result);
                result.map_err(|error| Error::Consumer {
                    topic,
                    group,
                    source: Box::new(error),
                })
            });
        }
        if let Some(interval) = self.lag_interval {
            services.tasks.spawn(report_lag(
                self.backend.clone(),
                lags,
                interval,
                services.stop.clone(),
            ));
        }
        tracing::info!(
            backend = self.backend.name(),
            handlers = self.handlers.len(),
            consumers = tasks.len(),
            "started"
        );
        Ok(Running {
            tasks,
            shutdown: self.shutdown.clone(),
            counters: self.counters.clone(),
            health: self.health.clone(),
            services,
            #[cfg(feature = "prometheus")]
            metrics_addr,
        })
    }

    /// What every handler of this app needs: its topics and groups, as
    /// `retry-kafka topics plan` reads them (see [`TOPOLOGY_ENV`]).
    pub fn plan(&self) -> TopologyPlan {
        TopologyPlan::of(&self.handlers, &self.topologies)
    }

    /// Starts, then runs until SIGINT, SIGTERM or [`ShutdownHandle::shutdown`], then drains.
    ///
    /// With [`TOPOLOGY_ENV`] set, prints [`plan`](App::plan) as JSON and returns instead.
    pub async fn run(&self) -> Result<(), Error> {
        if crate::config::topology_requested()? {
            println!(
                "{}",
                serde_json::to_string(&self.plan()).expect("plain data serializes")
            );
            return Ok(());
        }
        // Installed before anything starts, so a signal can never kill a half-started app.
        let mut signals = TerminationSignals::install()?;
        let running = self.start().await?;
        tokio::select! {
            _ = signals.recv() => tracing::info!("signal received; shutting down"),
            _ = self.shutdown.token.cancelled() => {}
        }
        running.shutdown().await
    }
}

/// Tasks that serve the app rather than consume: the metrics endpoint and the lag reporter.
/// Stopped once the consumers have; aborted if the app is dropped without stopping.
#[derive(Default)]
struct Services {
    tasks: JoinSet<()>,
    stop: CancellationToken,
}

impl Services {
    async fn stop(&mut self) {
        self.stop.cancel();
        while let Some(joined) = self.tasks.join_next().await {
            if let Err(error) = joined {
                tracing::warn!(%error, "a metrics task ended abnormally");
            }
        }
    }
}

/// Reports a consumer's end to its health and gauges: how it returned, or, when the task
/// panicked or was aborted (the [`Running`] dropped), that it ended without draining.
struct StopReport(Option<Arc<LevelMetrics>>);

impl StopReport {
    fn finished(mut self, result: &Result<(), Error>) {
        if let Some(metrics) = self.0.take() {
            // Debug: the message and its causes, as `main` would print them.
            metrics.stopped(result.as_ref().err().map(|error| format!("{error:?}")));
        }
    }
}

impl Drop for StopReport {
    fn drop(&mut self) {
        if let Some(metrics) = self.0.take() {
            metrics.stopped(Some(
                "the consumer task ended without draining (it panicked or the app was dropped)".into(),
            ));
        }
    }
}

/// One level's consumer lag: where to ask, and the gauge to set.
struct Lag {
    topic: Topic,
    group: String,
    gauge: ::metrics::Gauge,
}

/// Sets each level's lag gauge every `interval` until `stop`. A backend that cannot say
/// leaves the gauge as it was.
async fn report_lag<B: Backend>(backend: B, lags: Vec<Lag>, interval: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        for lag in &lags {
            let asked = tokio::select! {
                _ = stop.cancelled() => return,
                asked = backend.lag(&lag.topic, &lag.group) => asked,
            };
            match asked {
                Ok(messages) => lag.gauge.set(messages as f64),
                Err(error) => {
                    tracing::debug!(topic = %lag.topic, group = %lag.group, %error, "consumer lag unknown")
                }
            }
        }
    }
}

/// SIGINT and SIGTERM (Ctrl-C elsewhere), listened to from creation on.
struct TerminationSignals {
    #[cfg(unix)]
    streams: [tokio::signal::unix::Signal; 2],
}

impl TerminationSignals {
    fn install() -> Result<Self, Error> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let listen = |kind| {
                signal(kind).map_err(|error| {
                    Error::Config(ConfigError::Invalid {
                        field: "signal handlers",
                        reason: error.to_string(),
                    })
                })
            };
            Ok(Self {
                streams: [listen(SignalKind::interrupt())?, listen(SignalKind::terminate())?],
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            let [interrupt, terminate] = &mut self.streams;
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Stops a running [`App`]: fetching stops, in-flight handlers get the shutdown timeout to
/// finish, what finished is acknowledged, and the consumers leave their groups.
///
/// ```
/// let handle = retry_kafka::app::ShutdownHandle::default();
/// let stopper = handle.clone(); // e.g. moved into an admin endpoint
/// stopper.shutdown();
/// assert!(handle.is_shutdown());
/// ```
#[derive(Clone, Default)]
pub struct ShutdownHandle {
    token: CancellationToken,
    requested_at: Arc<OnceLock<Instant>>,
}

impl ShutdownHandle {
    /// Requests shutdown. Idempotent.
    pub fn shutdown(&self) {
        self.requested_at.get_or_init(Instant::now);
        self.token.cancel();
    }

    /// Whether shutdown was requested.
    pub fn is_shutdown(&self) -> bool {
        self.token.is_cancelled()
    }
}

/// What a consumer sees of shutdown: the request and the drain deadline.
#[derive(Clone)]
pub(crate) struct Shutdown {
    handle: ShutdownHandle,
    timeout: Duration,
}

impl Shutdown {
    pub(crate) async fn requested(&self) {
        self.handle.token.cancelled().await
    }

    /// When in-flight work must have finished; `None` until shutdown is requested.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.handle.requested_at.get().map(|at| *at + self.timeout)
    }
}

/// A started [`App`]: its consumer tasks, owned here and joined on shutdown.
pub struct Running {
    tasks: JoinSet<Result<(), Error>>,
    shutdown: ShutdownHandle,
    counters: Vec<Arc<Counters>>,
    health: Health,
    services: Services,
    #[cfg(feature = "prometheus")]
    metrics_addr: Option<std::net::SocketAddr>,
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

    /// The health of every consumer (the same as [`App::health`]).
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// The address `/metrics`, `/healthz` and `/readyz` are served on, with the port the
    /// system chose when [`metrics_addr`](AppBuilder::metrics_addr) gave port 0; `None`
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
