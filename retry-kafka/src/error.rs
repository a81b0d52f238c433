//! Errors of the library, one enum per concern.
//!
//! What `main` prints is part of the interface: `Debug` of these errors (what
//! `fn main() -> retry_kafka::Result<()>` shows on failure) is the full, human message followed by
//! its causes, as `anyhow` prints them. `{:#?}` shows the structure instead.
//!
//! ```
//! use retry_kafka::error::{ConfigError, Error};
//! let error = Error::from(ConfigError::NoBackend);
//! assert!(format!("{error:?}").starts_with("no backend configured: set KAFKA_BROKERS"));
//! assert_eq!(format!("{error:#?}"), "Config(\n    NoBackend,\n)");
//! ```

use std::error::Error as StdError;
use std::fmt;

use crate::event::CodecError;

type Source = Box<dyn StdError + Send + Sync>;

/// Anything that stops [`run`](crate::run) or [`App`](crate::App).
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration or the set of handlers is invalid; nothing was started.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The backend failed in a way the runtime cannot recover from.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The metrics endpoint could not start; nothing was started.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// A consumer task ended abnormally.
    #[error("consumer of topic {topic:?} in group {group:?} stopped: {source}")]
    Consumer {
        /// The topic it consumed.
        topic: String,
        /// Its group.
        group: String,
        /// Why it stopped: the backend's error, or the task's if it panicked.
        #[source]
        source: Source,
    },
}

/// A bad setting or handler set, found before any I/O.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No backend was chosen.
    #[error(
        "no backend configured: set KAFKA_BROKERS or REDIS_URL (or RETRY_KAFKA_BACKEND to \
         \"kafka-embedded\" or \"memory\" for an in-process broker), or choose one in code with \
         App::builder().backend(...)"
    )]
    NoBackend,
    /// A breaker set in code ([`AppBuilder::breaker`](crate::app::AppBuilder::breaker)) names
    /// no handler the app runs, or has a setting out of range.
    #[error("the breaker of handler {handler:?}: {reason}")]
    Breaker {
        /// The handler, as given.
        handler: String,
        /// What is wrong: the setting and its range, or that no such handler runs.
        reason: String,
    },
    /// A setting has an invalid value.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The setting's name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A backend was built outside a tokio runtime; its connections need one.
    #[error(
        "the {backend} backend must be built inside a tokio runtime (in an async fn under \
         #[tokio::main], or with a Runtime::enter() guard held)"
    )]
    NoRuntime {
        /// The backend's name.
        backend: &'static str,
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
    /// A handler declares `ordering = "key"` where its order cannot be kept.
    #[error("handler `{handler}` declares ordering = \"key\", which {reason}")]
    KeyOrdering {
        /// The handler's full name.
        handler: String,
        /// Why it cannot run that way, and what to do.
        reason: String,
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

/// The metrics endpoint (`AppBuilder::metrics_addr`, `RETRY_KAFKA_METRICS_ADDR`) could not
/// start.
///
/// ```
/// use retry_kafka::error::EndpointError;
/// assert!(EndpointError::RecorderInstalled.to_string().contains("RETRY_KAFKA_METRICS_ADDR"));
/// ```
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// Another global `metrics` recorder is installed; there can be only one per process.
    #[error(
        "the metrics endpoint (AppBuilder::metrics_addr or RETRY_KAFKA_METRICS_ADDR) needs its own \
         global metrics recorder, but another one is installed; either unset the endpoint and \
         export with that recorder (the app's metrics go to it), or do not install one"
    )]
    RecorderInstalled,
    /// The listen address could not be bound.
    #[error(
        "the metrics endpoint (AppBuilder::metrics_addr or RETRY_KAFKA_METRICS_ADDR) cannot \
         listen on {addr}: {source}"
    )]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A transport failure reported by a backend.
#[derive(thiserror::Error)]
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
    #[error("produce to topic {topic:?} failed: {source}")]
    Produce {
        /// The topic.
        topic: String,
        /// Why: the client's error, or the backend's own words.
        #[source]
        source: Source,
    },
    /// A consumer can deliver nothing more (its client is gone); the app must stop.
    #[error("the consumer of topic {topic:?} stopped: {source}")]
    ConsumerStopped {
        /// The topic it read.
        topic: String,
        /// Why: the client's or the task's error, or the backend's own words.
        #[source]
        source: Source,
    },
    /// The servers refused this client: a wrong user or password, a server certificate the
    /// client does not trust, or an ACL (a grant) that denies an operation. The reason is the
    /// server's or the TLS library's; it never holds the password.
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
        source: Source,
    },
    /// The backend's connection or client failed.
    #[error("{backend} backend: {source}")]
    Transport {
        /// The backend's name.
        backend: &'static str,
        /// The client's error.
        #[source]
        source: Source,
    },
}

/// Writes `error` as `main` should show it: its message, then each cause the message does not
/// already contain (this crate's messages quote their source, as `Transport` does), numbered
/// when there are several, like `anyhow`'s report.
pub(crate) fn report(error: &dyn StdError, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let mut shown = error.to_string();
    write!(f, "{shown}")?;
    let mut causes = Vec::new();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !shown.contains(&text) {
            shown.push_str(&text);
            causes.push(text);
        }
        source = cause.source();
    }
    match causes.as_slice() {
        [] => Ok(()),
        [only] => write!(f, "\n\nCaused by:\n    {only}"),
        many => {
            write!(f, "\n\nCaused by:")?;
            for (index, cause) in many.iter().enumerate() {
                write!(f, "\n    {index}: {cause}")?;
            }
            Ok(())
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !f.alternate() {
            return report(self, f);
        }
        match self {
            Error::Config(error) => f.debug_tuple("Config").field(error).finish(),
            Error::Backend(error) => f.debug_tuple("Backend").field(error).finish(),
            Error::Endpoint(error) => f.debug_tuple("Endpoint").field(error).finish(),
            Error::Consumer { topic, group, source } => f
                .debug_struct("Consumer")
                .field("topic", topic)
                .field("group", group)
                .field("source", source)
                .finish(),
        }
    }
}

impl fmt::Debug for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !f.alternate() {
            return report(self, f);
        }
        match self {
            ConfigError::NoBackend => f.write_str("NoBackend"),
            ConfigError::Breaker { handler, reason } => f
                .debug_struct("Breaker")
                .field("handler", handler)
                .field("reason", reason)
                .finish(),
            ConfigError::KeyOrdering { handler, reason } => f
                .debug_struct("KeyOrdering")
                .field("handler", handler)
                .field("reason", reason)
                .finish(),
            ConfigError::Invalid { field, reason } => f
                .debug_struct("Invalid")
                .field("field", field)
                .field("reason", reason)
                .finish(),
            ConfigError::NoRuntime { backend } => {
                f.debug_struct("NoRuntime").field("backend", backend).finish()
            }
            ConfigError::NoHandlers => f.write_str("NoHandlers"),
            ConfigError::DuplicateHandler {
                topic,
                group,
                first,
                second,
            } => f
                .debug_struct("DuplicateHandler")
                .field("topic", topic)
                .field("group", group)
                .field("first", first)
                .field("second", second)
                .finish(),
            ConfigError::TopicConflict { topic, first, second } => f
                .debug_struct("TopicConflict")
                .field("topic", topic)
                .field("first", first)
                .field("second", second)
                .finish(),
        }
    }
}

impl fmt::Debug for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !f.alternate() {
            return report(self, f);
        }
        match self {
            EndpointError::RecorderInstalled => f.write_str("RecorderInstalled"),
            EndpointError::Bind { addr, source } => f
                .debug_struct("Bind")
                .field("addr", addr)
                .field("source", source)
                .finish(),
        }
    }
}

#[cfg(any(feature = "redis", feature = "postgres"))]
impl BackendError {
    /// A write's failure as [`BackendError::Produce`] naming `topic`; a refusal stays one (it
    /// names what to change, which the topic does not).
    pub(crate) fn while_producing(self, topic: &str) -> Self {
        match self {
            BackendError::Transport { source, .. } => BackendError::Produce {
                topic: topic.to_owned(),
                source,
            },
            other => other,
        }
    }
}

impl fmt::Debug for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !f.alternate() {
            return report(self, f);
        }
        match self {
            BackendError::UnknownTopic { topic, hint } => f
                .debug_struct("UnknownTopic")
                .field("topic", topic)
                .field("hint", hint)
                .finish(),
            BackendError::TooFewPartitions {
                topic,
                actual,
                needed,
                main,
            } => f
                .debug_struct("TooFewPartitions")
                .field("topic", topic)
                .field("actual", actual)
                .field("needed", needed)
                .field("main", main)
                .finish(),
            BackendError::Produce { topic, source } => f
                .debug_struct("Produce")
                .field("topic", topic)
                .field("source", source)
                .finish(),
            BackendError::ConsumerStopped { topic, source } => f
                .debug_struct("ConsumerStopped")
                .field("topic", topic)
                .field("source", source)
                .finish(),
            BackendError::Refused {
                backend,
                reason,
                hint,
                source,
            } => f
                .debug_struct("Refused")
                .field("backend", backend)
                .field("reason", reason)
                .field("hint", hint)
                .field("source", source)
                .finish(),
            BackendError::Transport { backend, source } => f
                .debug_struct("Transport")
                .field("backend", backend)
                .field("source", source)
                .finish(),
        }
    }
}

/// An event could not be published.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// It did not encode.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The broker did not acknowledge it.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl fmt::Debug for SendError {
    /// The message and its causes; `{:#?}` shows the structure.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            _ if !f.alternate() => report(self, f),
            SendError::Codec(error) => f.debug_tuple("Codec").field(error).finish(),
            SendError::Backend(error) => f.debug_tuple("Backend").field(error).finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_the_message_and_the_causes_it_does_not_repeat() {
        let error = Error::from(BackendError::Transport {
            backend: "kafka",
            source: "connection refused".into(),
        });
        // The message quotes its source already: nothing is repeated.
        assert_eq!(format!("{error:?}"), "kafka backend: connection refused");

        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let error = Error::Consumer {
            topic: "orders".into(),
            group: "billing".into(),
            source: Box::new(Outer(std::io::Error::other("inner"))),
        };
        assert_eq!(
            format!("{error:?}"),
            "consumer of topic \"orders\" in group \"billing\" stopped: outer\n\nCaused by:\n    inner"
        );
        assert!(format!("{error:#?}").starts_with("Consumer {\n    topic: \"orders\","));
    }
}
