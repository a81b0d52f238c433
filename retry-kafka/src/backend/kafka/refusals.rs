//! Why the brokers refused a client, and the one rule for when that explains a failure.
//!
//! librdkafka reports a refused connection (a SASL authentication failure, a TLS handshake
//! that failed) to the client's error callback, and the request that needed the connection
//! then fails with a bare "broker transport failure". Every client of the backend (metadata,
//! admin, producer, consumers, the reader, the lag client) notes the refusals it is given in a
//! [`Refusals`] of its own, with the time, and explains its failures with it:
//!
//! **A refusal explains a failure when the same client noted it at most [`RECENT`] (30 s)
//! before the failure.** librdkafka tries a refused connection again at least every
//! `reconnect.backoff.max.ms` (10 s by default) and is refused again each time while the cause
//! holds, so a refusal that still holds is always that recent; an older one was followed by
//! nothing but silence or success and says nothing about a failure now.
//!
//! A broker's answer that names its own refusal (an ACL that denies the operation:
//! `TOPIC_AUTHORIZATION_FAILED`) explains the failure it comes with, whatever was noted before.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::transport;
use crate::error::BackendError;

/// An error kept as a [`BackendError`]'s source.
type Source = Box<dyn std::error::Error + Send + Sync>;

/// How long a noted refusal explains the same client's failures: three times librdkafka's
/// longest pause between reconnections (`reconnect.backoff.max.ms`, 10 s).
pub(super) const RECENT: Duration = Duration::from_secs(30);

/// What to check when a connection was refused.
const CONNECTION_HINT: &str = "check the credentials (sasl.username, sasl.password) and the TLS \
                               settings (ssl.ca.location)";

/// What to do when an ACL denies an operation on a topic.
const ACL_HINT: &str = "grant this client's principal that operation on the topic (kafka-acls.sh \
                        --add --allow-principal User:<name> --operation <operation> --topic \
                        <topic>), or remove the ACL that denies it";

/// The last refusal one client was given, with when, and the context librdkafka calls with
/// it. Cheap to clone: clones share the record.
#[derive(Clone)]
pub(crate) struct Refusals {
    /// Which client, for the log: `"producer"`, `"admin"`, ...
    client: &'static str,
    last: Arc<Mutex<Option<Refusal>>>,
}

struct Refusal {
    reason: String,
    at: Instant,
}

impl Refusals {
    /// The record of `client` (a word for the log: `"producer"`, `"consumer"`, ...).
    pub(crate) fn new(client: &'static str) -> Self {
        Self {
            client,
            last: Arc::default(),
        }
    }

    fn last(&self) -> MutexGuard<'_, Option<Refusal>> {
        self.last.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What a client's context does with an error event: notes it when it is a refusal, and
    /// logs it as rdkafka's default context does. librdkafka's reasons carry no secrets.
    pub(crate) fn note(&self, error: &KafkaError, reason: &str) {
        // The reader asks for the end of each partition it reads: an event, not an error.
        if matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            return;
        }
        self.note_at(error, reason, Instant::now());
        tracing::error!(target: "rdkafka::client", client = self.client, "librdkafka: {error}: {reason}");
    }

    fn note_at(&self, error: &KafkaError, reason: &str, at: Instant) {
        let refused = matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SSL)
        ) || reason.contains("SSL handshake failed")
            || reason.contains("authentication");
        if refused {
            *self.last() = Some(Refusal {
                reason: reason.to_owned(),
                at,
            });
        }
    }

    /// The reason of a refusal that explains a failure now (see the module's rule).
    fn recent(&self) -> Option<String> {
        let now = Instant::now();
        self.last()
            .as_ref()
            .filter(|refusal| now.saturating_duration_since(refusal.at) <= RECENT)
            .map(|refusal| refusal.reason.clone())
    }

    /// `error` as a backend error: [`BackendError::Refused`] with the reason when a refusal
    /// explains it, else a transport failure.
    pub(crate) fn explain(&self, error: KafkaError) -> BackendError {
        self.explain_or(error, transport)
    }

    /// A write to `topic` that failed with `error`: refused when an ACL denies it or a recent
    /// refusal explains it, else [`BackendError::Produce`].
    pub(crate) fn explain_write(&self, topic: &str, error: KafkaError) -> BackendError {
        let code = error.rdkafka_error_code();
        let error = match denied(topic, Operation::Write, code, error) {
            Ok(refused) => return refused,
            Err(error) => error,
        };
        self.explain_or(error, |error| BackendError::Produce {
            topic: topic.to_owned(),
            source: error.into(),
        })
    }

    fn explain_or(
        &self,
        error: KafkaError,
        otherwise: impl FnOnce(KafkaError) -> BackendError,
    ) -> BackendError {
        match self.recent() {
            Some(reason) => BackendError::Refused {
                backend: "kafka",
                reason,
                hint: CONNECTION_HINT,
                source: Box::new(error),
            },
            None => otherwise(error),
        }
    }
}

/// An operation on a topic that an ACL may deny.
#[derive(Clone, Copy)]
pub(crate) enum Operation {
    Write,
    Create,
}

impl Operation {
    /// Its name in Kafka's ACLs, and in words.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Operation::Write => ("WRITE", "write to"),
            Operation::Create => ("CREATE", "create"),
        }
    }
}

/// [`BackendError::Refused`] naming `topic` and the ACL when `code` says an ACL denied
/// `operation` on it (with `error` as its source); else `error`, given back.
pub(crate) fn denied<E: Into<Source>>(
    topic: &str,
    operation: Operation,
    code: Option<RDKafkaErrorCode>,
    error: E,
) -> Result<BackendError, E> {
    if code != Some(RDKafkaErrorCode::TopicAuthorizationFailed) {
        return Err(error);
    }
    let (acl, doing) = operation.names();
    Ok(BackendError::Refused {
        backend: "kafka",
        reason: format!(
            "not authorized to {doing} topic {topic:?} (TOPIC_AUTHORIZATION_FAILED: an ACL denies \
             {acl} on it to this client's principal)"
        ),
        hint: ACL_HINT,
        source: error.into(),
    })
}

impl rdkafka::ClientContext for Refusals {
    fn error(&self, error: KafkaError, reason: &str) {
        self.note(&error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for Refusals {}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> KafkaError {
        KafkaError::Global(RDKafkaErrorCode::Authentication)
    }

    fn failed() -> KafkaError {
        KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure)
    }

    #[test]
    fn a_refusal_explains_the_clients_failures_while_recent_and_not_after() {
        let refusals = Refusals::new("producer");
        assert!(matches!(
            refusals.explain(failed()),
            BackendError::Transport { .. }
        ));

        let reason = "SASL authentication error: Authentication failed";
        let long_ago = Instant::now().checked_sub(RECENT + Duration::from_secs(1));
        refusals.note_at(&refused(), reason, long_ago.expect("the clock is past 31 s"));
        let stale = refusals.explain(failed());
        assert!(matches!(stale, BackendError::Transport { .. }), "{stale}");

        refusals.note_at(&refused(), reason, Instant::now());
        let recent = refusals.explain(failed()).to_string();
        assert!(
            recent.contains(reason) && recent.contains("sasl.username"),
            "{recent}"
        );
        // Kept, not taken: the next failure within the window is explained too.
        let write = refusals.explain_write("orders", failed()).to_string();
        assert!(write.contains(reason), "{write}");

        // Another client's record is its own.
        let other = Refusals::new("admin");
        assert!(matches!(other.explain(failed()), BackendError::Transport { .. }));
        // An error event that is not a refusal is not noted.
        other.note_at(&failed(), "1/1 brokers are down", Instant::now());
        assert!(matches!(other.explain(failed()), BackendError::Transport { .. }));
    }

    #[test]
    fn a_denied_write_names_the_topic_and_the_acl_without_any_note() {
        let refusals = Refusals::new("producer");
        let error = KafkaError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed);
        let text = refusals
            .explain_write("orders.billing.retry.1", error)
            .to_string();
        assert!(
            text.contains("not authorized to write to topic \"orders.billing.retry.1\"")
                && text.contains("TOPIC_AUTHORIZATION_FAILED")
                && text.contains("--operation <operation>"),
            "{text}"
        );
        let other = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        let text = refusals.explain_write("orders", other);
        assert!(matches!(text, BackendError::Produce { .. }), "{text}");
    }
}
