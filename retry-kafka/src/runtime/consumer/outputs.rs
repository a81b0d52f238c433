//! Where a successful attempt's outputs (`Context::emit`) go, chosen once per consumer: to
//! the consumer ([`Consumer::emit`](crate::backend::Consumer::emit): Kafka, pipelined like
//! hand-offs, in the transaction of their source's offset with exactly-once), or published by
//! the attempt through the app's backend before it counts as a success. Either way a source
//! is acknowledged only after its outputs are durable (at least once without a transaction:
//! a failure after some were written runs the attempt again, and writes them again).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::future::{join_all, try_join_all};

use crate::backend::{Delivered, OutboundRecord, Output, Publish, Topic};
use crate::error::BackendError;
use crate::outbox::Emitted;

/// Where a level's successful attempts' outputs go, chosen once per consumer.
#[derive(Clone)]
pub(crate) enum OutputRoute {
    /// To the consumer, which writes them like hand-offs, pipelined (in the transaction of
    /// their source's offset where it has one).
    Consumer,
    /// Published by the attempt before it counts as a success.
    Publish(Arc<dyn PublishOutputs>),
}

/// A future writing one output.
pub(crate) type Writing = Pin<Box<dyn Future<Output = Result<Delivered, BackendError>> + Send>>;

/// Where the runtime publishes a successful attempt's outputs when its consumer does not write
/// them itself: the app's backend, erased (a level does not know its type).
pub(crate) trait PublishOutputs: Send + Sync + 'static {
    /// Starts writing `output`.
    fn write(&self, output: Output) -> Writing;
}

impl<B: Publish + Clone + 'static> PublishOutputs for B {
    fn write(&self, output: Output) -> Writing {
        let backend = self.clone();
        Box::pin(async move { backend.send(&output.topic, output.record).await })
    }
}

/// Writes `outputs` through `publisher`, all started at once in the order emitted (so one
/// key's events keep their order on a partition); `Err` says why the first that failed did.
pub(super) async fn publish(publisher: &dyn PublishOutputs, outputs: Vec<Output>) -> Result<(), String> {
    try_join_all(outputs.into_iter().map(|output| publisher.write(output)))
        .await
        .map(drop)
        .map_err(|error| format!("writing the handler's output failed: {error}"))
}

/// Writes the outputs of a batch's records through `publisher`, all started at once in record
/// order (each list taken); for each record, why one of its outputs failed, if one did.
pub(super) async fn publish_each(
    publisher: &dyn PublishOutputs,
    each: &mut [Vec<Output>],
) -> Vec<Option<String>> {
    let writes = each.iter_mut().enumerate().flat_map(|(index, outputs)| {
        std::mem::take(outputs)
            .into_iter()
            .map(move |output| (index, publisher.write(output)))
    });
    let written = join_all(writes.map(|(index, write)| async move { (index, write.await) })).await;
    let mut failed = vec![None; each.len()];
    for (index, result) in written {
        if let (Err(error), None) = (result, &failed[index]) {
            failed[index] = Some(format!("writing the handler's output failed: {error}"));
        }
    }
    failed
}

/// What a handler emitted, as the seam writes it: each to its main topic, keyed by its event.
pub(super) fn outputs(emitted: Vec<Emitted>) -> Vec<Output> {
    emitted
        .into_iter()
        .map(|emitted| Output {
            topic: Topic::main(emitted.topic),
            record: OutboundRecord {
                partition: None,
                key: emitted.key,
                payload: Some(emitted.payload),
                headers: emitted.headers,
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::InMemory;
    use crate::headers::Headers;
    use bytes::Bytes;

    fn emitted(topic: &str, text: &'static str) -> Emitted {
        Emitted {
            topic: topic.into(),
            key: Some(Bytes::from_static(b"7")),
            payload: Bytes::from_static(text.as_bytes()),
            headers: Headers::new(),
        }
    }

    #[tokio::test]
    async fn outputs_are_published_in_the_order_emitted() {
        let broker = InMemory::new();
        let emitted = vec![emitted("out", "1"), emitted("out", "2"), emitted("other", "3")];
        publish(&broker, outputs(emitted)).await.unwrap();
        let out: Vec<_> = broker
            .records("out")
            .into_iter()
            .map(|r| r.payload.unwrap())
            .collect();
        assert_eq!(out, [&b"1"[..], &b"2"[..]]);
        let other = broker.records("other");
        assert_eq!(other.len(), 1);
        assert_eq!(other[0].key.as_deref(), Some(&b"7"[..]));
    }
}
