//! Errors of the library, one enum per concern.

pub use crate::producer::SendError;

/// Anything that stops [`run`](crate::run) or [`App`](crate::App).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration or the set of handlers is invalid; nothing was started.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The backend failed in a way the runtime cannot recover from.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A consumer task ended abnormally.
    #[error("consumer of topic {topic:?} in group {group:?} stopped: {reason}")]
    Consumer {
        /// The topic it consumed.
        topic: String,
        /// Its group.
        group: String,
        /// Why it stopped.
        reason: String,
    },
}

/// A bad setting or handler set, found before any I/O.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No backend was chosen.
    #[error(
        "no backend configured: set KAFKA_BROKERS or REDIS_URL (or RETRY_KAFKA_BACKEND to \
         \"kafka-embedded\" or \"memory\" for an in-process broker), or choose one in code with \
         App::builder().backend(...)"
    )]
    NoBackend,
    /// A setting has an invalid value.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The setting's name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// No handler was registered (or all were filtered out).
    #[error(
        "no handlers to run: annotate an async fn with #[retry_handler(...)]; handlers in a crate \
         the program never references are not linked (add `use that_crate as _;`)"
    )]
    NoHandlers,
    /// Two handlers claim the same topic and group.
    #[error(
        "handlers {first} and {second} both consume topic {topic:?} in group {group:?}; \
         give one of them another `group`"
    )]
    DuplicateHandler {
        /// The topic.
        topic: String,
        /// The group.
        group: String,
        /// One handler.
        first: String,
        /// The other.
        second: String,
    },
    /// One topic name plays two roles.
    #[error("topic {topic:?} is {first} and also {second}; rename a group or change the topic naming")]
    TopicConflict {
        /// The topic.
        topic: String,
        /// Its first role, e.g. "the main topic of `billing::charge`".
        first: String,
        /// Its second role.
        second: String,
    },
}

/// A transport failure reported by a backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// A topic the runtime needs does not exist.
    #[error("topic {topic:?} does not exist{hint}")]
    UnknownTopic {
        /// The topic.
        topic: String,
        /// What to do about it, starting with "; ".
        hint: String,
    },
    /// A topic exists with too few partitions.
    #[error("topic {topic:?} has {actual} partitions but needs at least {needed} (as many as {main:?})")]
    TooFewPartitions {
        /// The topic.
        topic: String,
        /// Its partition count.
        actual: u32,
        /// The count it needs.
        needed: u32,
        /// The main topic it must match.
        main: String,
    },
    /// A produce was not acknowledged.
    #[error("produce to topic {topic:?} failed: {reason}")]
    Produce {
        /// The topic.
        topic: String,
        /// Why.
        reason: String,
    },
    /// A consumer can deliver nothing more (its client is gone); the app must stop.
    #[error("the consumer of topic {topic:?} stopped: {reason}")]
    ConsumerStopped {
        /// The topic it read.
        topic: String,
        /// Why.
        reason: String,
    },
    /// The servers refused this client: a wrong user or password, or a server certificate
    /// the client does not trust. The reason is the server's or the TLS library's; it never
    /// holds the password.
    #[error("{backend} backend: the servers refused this client: {reason}; {hint}")]
    Refused {
        /// The backend's name.
        backend: &'static str,
        /// Why, as the server or the TLS library said it.
        reason: String,
        /// Which settings to check, in the backend's words.
        hint: &'static str,
        /// The client's error that followed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The backend's connection or client failed.
    #[error("{backend} backend: {source}")]
    Transport {
        /// The backend's name.
        backend: &'static str,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}
