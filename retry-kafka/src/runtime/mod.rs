//! `run()` and [`App`]: collect the handlers, validate them, start one consumer per topic
//! level, and shut down gracefully.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, Subscription, TopicRole};
use crate::config::BackendChoice;
use crate::error::{BackendError, ConfigError, Error};
use crate::handlers::{registered_handlers, HandlerSpec};
use crate::policy::{RetryPolicy, TopicNaming, Topology, TopologyPlan};
use crate::producer::Producer;
use crate::stats::{Counters, Stats};
use crate::InMemory;

mod consumer;
mod provision;
mod validate;

pub use provision::Provisioning;

/// How long in-flight handlers may run after shutdown is requested.
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Hand-offs each consumer may have under way at once.
const DEFAULT_HAND_OFF_WINDOW: usize = 1024;

/// Environment variable that picks the backend for [`run`].
pub const BACKEND_ENV: &str = "RETRY_KAFKA_BACKEND";

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
    }
}

/// Every registered handler on `backend`, until a signal.
async fn run_on<B: Backend>(backend: B) -> crate::Result<()> {
    App::builder().backend(backend).build()?.run().await
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
}

impl<B: Backend> AppBuilder<B> {
    /// Collects and validates the handlers. No I/O happens here.
    pub fn build(self) -> Result<App<B>, ConfigError> {
        let handlers: Vec<&'static HandlerSpec> = registered_handlers()
            .filter(|spec| self.filter.as_ref().is_none_or(|keep| keep(spec)))
            .collect();
        let topologies = validate::validate(&handlers, &self.naming)?;
        Ok(App {
            backend: self.backend,
            counters: handlers.iter().map(|spec| Counters::new(spec)).collect(),
            handlers,
            topologies: topologies.into_iter().map(Arc::new).collect(),
            shutdown: ShutdownHandle::default(),
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
                    .lag(topology.level(level), TopicRole::of_level(level), group)
                    .await?;
            }
        }
        Ok(backlog)
    }

    /// A handle that stops the app from anywhere.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Creates the topics, joins every group and starts the consumers; returns once all run.
    pub async fn start(&self) -> Result<Running, Error> {
        for topology in &self.topologies {
            provision::provision(&self.backend, topology, self.provisioning).await?;
        }
        let shutdown = Shutdown {
            handle: self.shutdown.clone(),
            timeout: self.shutdown_timeout,
        };
        let mut levels = Vec::new();
        for ((spec, topology), counters) in self.handlers.iter().zip(&self.topologies).zip(&self.counters) {
            let policy = Arc::new(RetryPolicy::of(spec));
            let main_topic: Arc<str> = topology.main.as_str().into();
            for level in 0..=policy.levels() {
                let topic = topology.level(level);
                let consumer = self
                    .backend
                    .subscribe(Subscription {
                        topic: topic.to_owned(),
                        role: TopicRole::of_level(level),
                        group: topology.consumer_group(spec.group(), level).to_owned(),
                    })
                    .await?;
                let level = consumer::Level {
                    hand_off_window: self.hand_off_window,
                    spec,
                    policy: policy.clone(),
                    topology: topology.clone(),
                    counters: counters.clone(),
                    level,
                    topic: topic.into(),
                    main_topic: main_topic.clone(),
                    shutdown: shutdown.clone(),
                };
                levels.push((level, consumer));
            }
        }
        let mut tasks = JoinSet::new();
        for (level, consumer) in levels {
            let (topic, group) = (level.topic.to_string(), level.spec.group().to_owned());
            tasks.spawn(async move {
                level.run(consumer).await.map_err(|error| Error::Consumer {
                    topic,
                    group,
                    source: Box::new(error),
                })
            });
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
        first_error.map_or(Ok(()), Err)
    }
}
