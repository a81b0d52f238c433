//! # retry-kafka
//!
//! Resilient event consumers. Annotate an async fn with `#[retry_handler]` and every failure is
//! retried on its own retry level (a topic per delay, so nothing blocks), then kept in a
//! dead-letter queue with the whole failure story in its headers.
//!
//! ```
//! use retry_kafka::prelude::*;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Event, Serialize, Deserialize, Debug)]
//! #[event(topic = "orders", key = "order_id")]
//! struct OrderPlaced { order_id: u64, amount_cents: u64 }
//!
//! #[retry_handler(topic = "orders", group = "billing", retries = ["10s", "1m", "5m"], dlq)]
//! async fn charge(order: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
//!     if order.amount_cents == 0 {
//!         return Err(HandlerError::permanent("empty order")); // straight to the DLQ
//!     }
//!     Ok(())
//! }
//! ```
//!
//! Start everything with [`run`] (backend from the environment) or [`App::builder`]; test
//! handlers with [`testing::TestApp`] in virtual time.
//!
//! # Where things are
//!
//! The crate root holds what every service uses: [`run`], [`App`], [`Event`],
//! [`retry_handler`], [`Context`], [`HandlerError`], [`Producer`], [`Error`] and [`Result`], and
//! the [`prelude`] that imports them. The rest is grouped by concern:
//!
//! | module | what it holds |
//! |---|---|
//! | [`app`] | [`App`] and its builder, start and shutdown, topic naming and provisioning, the printed topology plan, statistics, health |
//! | [`handler`] | what a handler is: its registration, its errors, its [`Context`] |
//! | [`event`] | the [`Event`] trait, partition keys and codecs |
//! | [`headers`] | message headers and the failure context (the `rk-*` wire format) |
//! | [`backend`] | the transports (Kafka, Redis, in-process; PostgreSQL for retries) and the trait a new one implements |
//! | [`dead_letters`] | dead letters for operators: read, filter, replay with a checkpoint (what the `retry-kafka` tool runs) |
//! | [`settings`] | [`Settings`](settings::Settings): the backend choice with its addresses and options, read from the environment (every variable named in [`settings::vars`]) or given in code, and connected by [`Settings::with_backend`](settings::Settings::with_backend) |
//! | [`error`] | the errors [`run`] and the backends return |
//! | [`testing`] | [`TestApp`](testing::TestApp): handlers on the in-process broker, in virtual time |
//!
//! # Cargo features
#![doc = document_features::document_features!()]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backend;
// Batch handlers: the types their signatures use, and how a batch is decoded and started.
mod batch;
// `breaker` on a handler: what it declares and one handler's breaker at work.
mod breaker;
// The ranges of its settings, shared with the macros: a symlink to
// `retry-kafka-macros/src/breaker_rules.rs`.
mod breaker_rules;
mod clock;
// `Settings`, the one reader of the environment, and every variable's name (public as `settings`).
mod config;
// What a handler knows about the message it handles.
mod context;
pub mod dead_letters;
pub mod error;
pub mod event;
// A failed attempt: its kind and the error behind it.
mod failure;
// A handler's output (`Context::emit`), kept until its attempt succeeds.
mod outbox;
/// What a handler is: its registration ([`HandlerSpec`](handler::HandlerSpec)), its failures
/// ([`HandlerError`]) and what it knows about the message it handles ([`Context`]).
pub mod handler {
    pub use crate::batch::{BatchContext, BatchError, BatchFailures};
    pub use crate::breaker::{Breaker, BreakerState, BreakerWindow};
    pub use crate::context::{Context, Origin};
    pub use crate::failure::{ErrorKind, HandlerError};
    pub use crate::handlers::{registered_handlers, HandlerSpec, OnExhausted, RetryOrdering};
    pub use crate::outbox::EmitError;
    pub use crate::rate::Rate;
}
// The file behind `handler`; what only the macro expansions use is public through `__private`
// alone, so a user cannot build a `HandlerSpec` and diagnostics name the `__private` path.
#[path = "handler.rs"]
mod handlers;
pub mod headers;
mod health;
pub mod held_keys;
mod metrics;
// The topic-name rule, shared with the macros: a symlink to `retry-kafka-macros/src/names.rs`.
mod names;
mod partitioner;
mod policy;
mod producer;
// `rate = "200/s"`: the declared rate and the limiter the levels of a handler share.
mod rate;
mod runtime;
/// What a program takes from outside its code, typed: [`Settings`](settings::Settings), the
/// backend choice with its addresses and options, the metrics address, whether to print the
/// topology.
///
/// Built by [`Settings::from_env`](settings::Settings::from_env), the one reader of the
/// environment in the library (every variable's name is in [`vars`](settings::vars)), or in
/// code from `Settings::default()`. [`run`] reads them from the environment;
/// [`run_with`](crate::app::run_with) takes them as given; the `retry-kafka` tool builds them
/// from the environment and its flags. [`Settings::with_backend`](settings::Settings::with_backend)
/// connects them, for `run()` and the tool alike.
///
/// ```
/// use retry_kafka::settings::{BackendChoice, Settings};
///
/// let mut settings = Settings::default();
/// settings.redis.url = Some("redis://127.0.0.1:6379".into());
/// settings.redis.unordered = true;
/// assert_eq!(settings.choice()?, BackendChoice::Redis);
/// # Ok::<(), retry_kafka::error::ConfigError>(())
/// ```
pub mod settings {
    pub use crate::config::{vars, BackendChoice, KafkaSettings, PostgresSettings, RedisSettings, Settings};
    pub use crate::runtime::WithBackend;
}
// Stopping an app: the handle and the drain deadline.
mod shutdown;
mod stats;
pub mod testing;
// W3C trace context across hops: hooks the consumer loop calls (empty without `opentelemetry`).
mod trace;

/// The application: building it, starting it, stopping it, and what it counts.
pub mod app {
    pub use crate::health::{ConsumerReport, ConsumerState, Health, HealthReport};
    pub use crate::policy::{HandlerPlan, LevelPlan, TopicNaming, TopicRole, Topology, TopologyPlan};
    pub use crate::runtime::{
        run, run_with, App, AppBuilder, NoBackend, Provisioning, Running, ShutdownHandle,
    };
    pub use crate::stats::{HandlerStats, Stats};
}

pub use batch::{BatchContext, BatchError};
pub use context::Context;
pub use error::Error;
pub use event::Event;
pub use failure::HandlerError;
pub use producer::Producer;
pub use runtime::{run, App};

// Crate-internal shorthands.
#[cfg(feature = "kafka")]
pub(crate) use backend::kafka;
pub(crate) use backend::memory::InMemory;
#[cfg(feature = "postgres")]
pub(crate) use backend::postgres;
#[cfg(feature = "redis")]
pub(crate) use backend::redis;

/// Derives [`Event`]: `#[event(topic = "...", key = "field", codec = "json", name = "...")]`
/// (codecs: `"json"`, `"msgpack"`, `"protobuf"`, `"raw"` or a type's path; see [`event::codec`]).
pub use retry_kafka_macros::Event;

/// Registers an async fn as a handler with retry levels and a dead-letter queue.
///
/// ```
/// use retry_kafka::prelude::*;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Event, Serialize, Deserialize)]
/// # #[event(topic = "orders")]
/// # struct OrderPlaced { order_id: u64 }
///
/// #[retry_handler(group = "billing", retries = ["10s", "1m", "5m"], dlq, timeout = "30s", concurrency = 4)]
/// async fn charge(order: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
///     Ok(())
/// }
/// ```
///
/// | option | meaning | default |
/// |---|---|---|
/// | `topic = "orders"` | main topic | the event's topic |
/// | `group = "billing"` | consumer group | the function's name |
/// | `retries = [...]` | one delay per retry level: `["10s", "1m"]`, `["30s"; 3]`, `exponential(first = "1s", factor = 2, levels = 5, max = "1m")` | no retries |
/// | `dlq` | keep exhausted messages in the dead-letter topic | — |
/// | `on_exhausted = "drop"` | drop exhausted messages on purpose (logged, counted) | — |
/// | `timeout = "30s"` | one attempt's time limit | none |
/// | `concurrency = N` | calls in flight per consumer (attempts, or batches) | 1 |
/// | `batch(max = 500, linger = "50ms")` | a batch handler, `async fn(Vec<E>)` or `async fn(Vec<E>, BatchContext)` returning `Result<(), BatchError>`: up to `max` due records per call, the first waiting at most `linger` for more | one record per call |
/// | `rate = "200/s"` | the most attempts per second (`/m`, `/h`) over all the handler's levels in the process | no limit |
/// | `crate = "rk"` | the path to this crate, for a renamed dependency or a re-export | `::retry_kafka` |
///
/// One of `dlq` and `on_exhausted` is required: a handler's failures never vanish unless the
/// code says so. Every option is checked at compile time.
pub use retry_kafka_macros::retry_handler;

/// Cheaply cloneable bytes, used for keys, payloads and header values.
pub use bytes::Bytes;

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a handler module needs: `use retry_kafka::prelude::*;`.
pub mod prelude {
    pub use crate::backend::memory::InMemory;
    pub use crate::{retry_handler, App, BatchContext, BatchError, Context, Event, HandlerError, Producer};
}

/// Paths used by macro expansions. Not public API.
#[doc(hidden)]
pub mod __private {
    // Diagnostics name an item by its shortest public path, and this module's children are
    // the last resort; this keeps a wrong handler error type reported as a bound of
    // `retry_kafka::__private::into_outcome`, a path that exists.
    pub use crate::batch::into_batch_outcome;
    pub use crate::handlers::into_outcome;

    /// Everything an expansion refers to, named after this release. The runtime pins the macros
    /// crate to its own version (`=`), and the module name makes any other pairing (a `[patch]`,
    /// a vendored copy) fail to compile, instead of expanding against items whose meaning may
    /// have changed. `retry-kafka-macros` derives the name from its version, so a release
    /// renames this module too.
    pub mod v0_1_0 {
        pub use crate::batch::{into_batch_outcome, BatchContext, BatchInput, BatchStart};
        pub use crate::breaker::Breaker;
        pub use crate::context::Context;
        pub use crate::event::codec::{Json, Raw};
        pub use crate::event::short_forms::{MsgPack, MsgPackFeature, Protobuf, ProtobufFeature};
        pub use crate::event::{Codec, CodecError, Event, EventKey, RawPayload};
        pub use crate::handlers::{
            handler_spec, into_outcome, Call, Declaration, HandlerSlot, OnExhausted, RetryOrdering,
        };
        pub use crate::rate::Rate;
        pub use bytes::Bytes;
        pub use inventory;
    }
}

/// The code blocks of the user's pages, compiled and run as doc tests of this crate: the
/// README (`retry-kafka/README.md` is a link to the workspace's, the package's readme),
/// ARCHITECTURE.md and every page of `docs/`, read from the workspace. `cfg(doctest)` keeps
/// them out of every other build. `tests/layout.rs` fails naming a page of `docs/` missing here.
#[cfg(doctest)]
mod guide {
    #[doc = include_str!("../README.md")]
    mod readme {}
    #[doc = include_str!("../../ARCHITECTURE.md")]
    mod architecture {}
    #[doc = include_str!("../../docs/handlers.md")]
    mod handlers {}
    #[doc = include_str!("../../docs/codecs.md")]
    mod codecs {}
    #[doc = include_str!("../../docs/running.md")]
    mod running {}
    #[doc = include_str!("../../docs/metrics.md")]
    mod metrics {}
    #[doc = include_str!("../../docs/tracing.md")]
    mod tracing {}
    #[doc = include_str!("../../docs/tool.md")]
    mod tool {}
    #[doc = include_str!("../../docs/kafka.md")]
    mod kafka {}
    #[doc = include_str!("../../docs/redis.md")]
    mod redis {}
    #[doc = include_str!("../../docs/postgres.md")]
    mod postgres {}
    #[doc = include_str!("../../docs/benchmarks.md")]
    mod benchmarks {}
}
