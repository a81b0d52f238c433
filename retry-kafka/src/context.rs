//! What a handler knows about the message it handles: [`Context`], with the message's
//! [`Origin`] on the main topic.

use std::sync::Arc;

use bytes::Bytes;

use crate::event::Event;
use crate::headers::Headers;
use crate::outbox::{EmitError, Emitted, Outbox};

/// Where a message was first consumed, before any retry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Origin {
    /// The main topic.
    pub topic: Arc<str>,
    /// The partition on the main topic.
    pub partition: u32,
    /// The offset on the main topic.
    pub offset: u64,
    /// The message's timestamp on the main topic (epoch ms), when the broker gave one.
    pub timestamp_ms: Option<i64>,
}

/// What a handler knows about the message it is handling.
///
/// ```
/// use retry_kafka::prelude::*;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Event, Serialize, Deserialize)]
/// # #[event(topic = "emails")]
/// # struct SendEmail { to: String }
/// # async fn send_via(_provider: &str, _mail: &SendEmail) -> Result<(), std::io::Error> { Ok(()) }
///
/// #[retry_handler(retries = ["30s", "5m"], dlq)]
/// async fn send(mail: SendEmail, ctx: Context) -> Result<(), HandlerError> {
///     // After the first failure, try the backup provider.
///     let provider = if ctx.attempt() == 1 { "primary" } else { "backup" };
///     send_via(provider, &mail).await?;
///     Ok(())
/// }
/// ```
#[derive(Debug, Clone)]
pub struct Context {
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    pub(crate) group: &'static str,
    pub(crate) topic: Arc<str>,
    pub(crate) partition: u32,
    pub(crate) offset: u64,
    pub(crate) origin: Origin,
    pub(crate) first_failure_ms: Option<i64>,
    pub(crate) replays: u32,
    pub(crate) headers: Headers,
    /// What the attempt emits, written when it succeeds.
    pub(crate) outbox: Outbox,
}

impl Context {
    /// This attempt's number: 1 on the main topic, `n + 1` on retry level `n`.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// How many attempts the handler gets in all: `1 + retry levels`.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Whether a failure now is final (dead-lettered or dropped).
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }

    /// The retry level this attempt runs on; 0 is the main topic.
    pub fn level(&self) -> u32 {
        self.attempt - 1
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        self.group
    }

    /// The topic this attempt's message was read from (a retry topic after the first failure).
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition this attempt's message was read from.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// The offset this attempt's message was read from.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Where the message was first consumed.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// When the first attempt failed (epoch ms); `None` on the first attempt.
    pub fn first_failure_at_ms(&self) -> Option<i64> {
        self.first_failure_ms
    }

    /// How often this message was replayed from the dead-letter queue.
    pub fn replays(&self) -> u32 {
        self.replays
    }

    /// The message's headers, including the `rk-*` failure context on retries.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// Emits `event` to its topic, keyed by its key, when this attempt succeeds: an attempt
    /// that fails writes nothing it emitted (its retry emits again). With Kafka's exactly-once
    /// ([`KafkaBuilder::exactly_once`](crate::backend::kafka::KafkaBuilder::exactly_once)) the
    /// events are written in the transaction that commits this message's offset, so a
    /// consume, transform, produce handler writes each once, whatever crashes; otherwise they
    /// are published before the message is acknowledged (at least once: a crash between the
    /// two writes them again). What a handler writes elsewhere (a database, an HTTP call)
    /// stays at least once.
    ///
    /// ```
    /// use retry_kafka::prelude::*;
    /// # use serde::{Deserialize, Serialize};
    /// #[derive(Event, Serialize, Deserialize)]
    /// #[event(topic = "orders", key = "order_id")]
    /// struct OrderPlaced { order_id: u64, cents: u64 }
    ///
    /// #[derive(Event, Serialize, Deserialize)]
    /// #[event(topic = "invoices", key = "order_id")]
    /// struct InvoiceDue { order_id: u64, cents: u64 }
    ///
    /// #[retry_handler(retries = ["1s"], dlq)]
    /// async fn invoice(order: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
    ///     ctx.emit(&InvoiceDue { order_id: order.order_id, cents: order.cents })?;
    ///     Ok(())
    /// }
    /// ```
    pub fn emit<E: Event>(&self, event: &E) -> Result<(), EmitError> {
        self.emit_to(E::TOPIC, event, Headers::new())
    }

    /// Emits `event` to `topic` with `headers`, keyed by its key, when this attempt
    /// succeeds (see [`emit`](Context::emit)).
    ///
    /// ```
    /// use retry_kafka::headers::Headers;
    /// use retry_kafka::prelude::*;
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Event, Serialize, Deserialize)]
    /// # #[event(topic = "orders", key = "order_id")]
    /// # struct OrderPlaced { order_id: u64 }
    /// #[retry_handler(retries = ["1s"], dlq)]
    /// async fn audit(order: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
    ///     let mut headers = Headers::new();
    ///     headers.insert("source", "billing");
    ///     ctx.emit_to("orders.audit", &order, headers)?;
    ///     Ok(())
    /// }
    /// ```
    pub fn emit_to<E: Event>(&self, topic: &str, event: &E, headers: Headers) -> Result<(), EmitError> {
        self.outbox.push(Emitted {
            topic: topic.into(),
            key: event.key(),
            payload: Bytes::from(event.encode()?),
            headers,
        })
    }
}
