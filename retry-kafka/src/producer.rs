//! The typed producer: `producer.send(&event)` picks topic and key from the event.

use bytes::Bytes;

use crate::backend::{Backend, Delivered, OutboundRecord, Topic};
use crate::error::SendError;
use crate::event::Event;
use crate::headers::Headers;

/// Publishes events on a backend, waiting for the broker's acknowledgement.
///
/// ```
/// use retry_kafka::prelude::*;
/// # use serde::{Deserialize, Serialize};
/// #[derive(Event, Serialize, Deserialize)]
/// #[event(topic = "orders", key = "order_id")]
/// struct OrderPlaced { order_id: u64 }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let broker = InMemory::new();
/// let producer = Producer::new(broker.clone());
/// let delivered = producer.send(&OrderPlaced { order_id: 42 }).await.unwrap();
/// let stored = &broker.records("orders")[0];
/// assert_eq!(stored.key.as_deref(), Some(&b"42"[..]));
/// assert_eq!(stored.partition, delivered.partition);
/// # }
/// ```
#[derive(Clone)]
pub struct Producer<B> {
    backend: B,
}

impl<B: Backend> Producer<B> {
    /// A producer on `backend`.
    pub fn new(backend: B) -> Self {
        Self { backend }
    }

    /// Publishes `event` to its topic, keyed by its key.
    pub async fn send<E: Event>(&self, event: &E) -> Result<Delivered, SendError> {
        self.send_to(E::TOPIC, event, Headers::new()).await
    }

    /// Publishes `event` to `topic` with extra `headers` (trace context, tenant, ...).
    pub async fn send_to<E: Event>(
        &self,
        topic: &str,
        event: &E,
        headers: Headers,
    ) -> Result<Delivered, SendError> {
        let record = OutboundRecord {
            partition: None,
            key: event.key(),
            payload: Some(Bytes::from(event.encode()?)),
            headers,
        };
        Ok(self.backend.send(&Topic::main(topic), record).await?)
    }

    /// Publishes raw bytes, as any other client could.
    pub async fn send_raw(&self, topic: &str, record: OutboundRecord) -> Result<Delivered, SendError> {
        Ok(self.backend.send(&Topic::main(topic), record).await?)
    }
}
