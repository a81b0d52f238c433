//! `run()` and [`App`]: collect the handlers, validate them, start one consumer per topic
//! level, and shut down gracefully.
//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | [`run`] and [`run_with`]: the registered handlers on the backend [`Settings`] choose |
//! | `connect.rs` | [`Settings::with_backend`]: settings to a backend, for `run()` and the tool |
//! | `builder.rs` | [`AppBuilder`]: backend, handler filter, naming, limits; validation |
//! | `app.rs` | [`App`]: what it answers (plan, stats, backlog, health) and [`App::run`] |
//! | `start.rs` | [`App::start`]: provisioning, a consumer task per level, the endpoint and lag tasks |
//! | `running.rs` | [`Running`]: the started tasks, joined on shutdown |
//! | `signals.rs` | SIGINT and SIGTERM |

use std::net::SocketAddr;

use crate::backend::{Backend, Browse};
use crate::config::Settings;
use crate::InMemory;

mod app;
mod builder;
mod connect;
mod consumer;
#[cfg(feature = "prometheus")]
mod endpoint;
// The consumer-lag gauge's task.
mod lag;
mod provision;
mod running;
mod signals;
mod start;
mod validate;

pub use crate::shutdown::ShutdownHandle;
pub use app::App;
pub use builder::{AppBuilder, NoBackend};
pub use connect::WithBackend;
pub use provision::Provisioning;
pub use running::Running;

/// Runs every registered handler until SIGINT or SIGTERM, on the backend the environment names
/// ([`Settings::from_env`], then [`run_with`]).
///
/// | setting | backend |
/// |---|---|
/// | `KAFKA_BROKERS=host:9092,...` | Kafka (retry and DLQ topics on `KAFKA_RETRY_BROKERS` if set) |
/// | `RETRY_KAFKA_BACKEND=kafka` | Kafka, and `KAFKA_BROKERS` must be set |
/// | `RETRY_KAFKA_BACKEND=kafka-embedded` | an embedded Kafka cluster in this process (demos) |
/// | `REDIS_URL=redis://host:6379` | Redis Streams |
/// | `RETRY_KAFKA_BACKEND=redis` | Redis Streams, and `REDIS_URL` must be set |
/// | `RETRY_KAFKA_BACKEND=kafka+redis` | main topics on Kafka, retries and dead letters on Redis ([`Tiered`](crate::backend::Tiered)) |
/// | `DATABASE_URL` (or `POSTGRES_URL`) beside one of `KAFKA_BROKERS` and `REDIS_URL` | retries and dead letters in PostgreSQL (`kafka+postgres`, `redis+postgres`) |
/// | `RETRY_KAFKA_BACKEND=memory` | the in-process broker (demos) |
///
/// With the `prometheus` feature, `RETRY_KAFKA_METRICS_ADDR=0.0.0.0:9090` serves `/metrics`,
/// `/healthz` and `/readyz` there (`AppBuilder::metrics_addr`). With
/// `RETRY_KAFKA_PRINT_TOPOLOGY=1`, or `--retry-kafka-topology` as the program's first
/// argument, it prints the handlers' topology ([`App::print_plan`]) and connects nowhere:
/// how `retry-kafka topics plan --program` learns them. Every variable is in
/// [`settings::vars`](crate::settings::vars).
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
    run_with(Settings::from_env()?).await
}

/// Runs every registered handler until SIGINT or SIGTERM, on the backend `settings` choose,
/// as [`run`] does with the environment's. Reads no environment variable.
///
/// ```no_run
/// use retry_kafka::settings::Settings;
///
/// #[tokio::main]
/// async fn main() -> retry_kafka::Result<()> {
///     let mut settings = Settings::from_env()?;
///     settings.kafka.brokers.get_or_insert_with(|| "localhost:9092".into());
///     retry_kafka::app::run_with(settings).await
/// }
/// ```
pub async fn run_with(settings: Settings) -> crate::Result<()> {
    if settings.print_topology {
        // No backend is needed to name topics: the program may run without its settings here.
        App::builder().backend(InMemory::new()).build()?.print_plan();
        return Ok(());
    }
    let handlers = RegisteredHandlers {
        metrics_addr: settings.checked_metrics_addr()?,
    };
    settings.with_backend(handlers).await?
}

/// Every registered handler, run until a signal: what [`run_with`] does on its backend.
struct RegisteredHandlers {
    /// Checked against the build's features already.
    #[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
    metrics_addr: Option<SocketAddr>,
}

impl WithBackend for RegisteredHandlers {
    type Output = crate::Result<()>;

    async fn run<B: Backend + Browse>(self, backend: B) -> crate::Result<()> {
        let builder = App::builder().backend(backend);
        #[cfg(feature = "prometheus")]
        let builder = match self.metrics_addr {
            Some(addr) => builder.metrics_addr(addr),
            None => builder,
        };
        builder.build()?.run().await
    }
}
