//! `run()` and [`App`]: collect the handlers, validate them, start one consumer per topic
//! level, and shut down gracefully.

use crate::backend::Backend;
use crate::config::BackendChoice;
use crate::InMemory;

mod app;
mod builder;
mod consumer;
#[cfg(feature = "prometheus")]
mod endpoint;
mod provision;
mod running;
mod signals;
mod start;
mod validate;

pub use crate::shutdown::ShutdownHandle;
pub use app::App;
pub use builder::{AppBuilder, NoBackend};
pub use provision::Provisioning;
pub use running::Running;

/// Environment variable that picks the backend for [`run`].
pub const BACKEND_ENV: &str = "RETRY_KAFKA_BACKEND";
/// Environment variable with the address [`run`] serves `/metrics`, `/healthz` and `/readyz`
/// on (feature `prometheus`), e.g. `0.0.0.0:9090`. See [`AppBuilder::metrics_addr`].
pub const METRICS_ADDR_ENV: &str = "RETRY_KAFKA_METRICS_ADDR";

/// Set to `1` (or pass `--retry-kafka-topology` as the program's first argument), and [`run`]
/// and [`App::run`] print the program's [`TopologyPlan`](crate::app::TopologyPlan) as JSON on stdout and return at once,
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
