//! The partition counts a backend has seen, per topic: Redis keeps a topic's count in its meta
//! hash, PostgreSQL as rows; both ask once and remember it, since every write that picks a
//! partition by key needs it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use crate::error::BackendError;

/// Partition counts known so far, per topic name. A count is remembered once the topic exists
/// (a missing topic is asked about again) and forgotten when the topic grows.
#[derive(Debug, Default)]
pub(crate) struct PartitionCounts {
    known: Mutex<HashMap<String, u32>>,
}

impl PartitionCounts {
    /// The count of `topic`, if known.
    pub(crate) fn get(&self, topic: &str) -> Option<u32> {
        self.known.lock().unwrap().get(topic).copied()
    }

    /// Remembers that `topic` has `count` partitions.
    pub(crate) fn remember(&self, topic: &str, count: u32) {
        self.known.lock().unwrap().insert(topic.to_owned(), count);
    }

    /// Forgets the count of `topic` (it grew), so the next [`get_or_load`](Self::get_or_load)
    /// asks again. Only PostgreSQL's topics grow under a running backend.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn forget(&self, topic: &str) {
        self.known.lock().unwrap().remove(topic);
    }

    /// The count of `topic`: remembered, or `load`ed and remembered when the topic exists.
    pub(crate) async fn get_or_load<F>(&self, topic: &str, load: F) -> Result<Option<u32>, BackendError>
    where
        F: Future<Output = Result<Option<u32>, BackendError>>,
    {
        if let Some(count) = self.get(topic) {
            return Ok(Some(count));
        }
        let loaded = load.await?;
        if let Some(count) = loaded {
            self.remember(topic, count);
        }
        Ok(loaded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_count_is_asked_once_and_again_after_it_is_forgotten() {
        let counts = PartitionCounts::default();
        assert_eq!(counts.get_or_load("t", async { Ok(None) }).await.unwrap(), None);
        assert_eq!(
            counts.get_or_load("t", async { Ok(Some(3)) }).await.unwrap(),
            Some(3)
        );
        let other = async { Ok(Some(99)) };
        assert_eq!(
            counts.get_or_load("t", other).await.unwrap(),
            Some(3),
            "not asked again"
        );
        counts.forget("t");
        assert_eq!(
            counts.get_or_load("t", async { Ok(Some(4)) }).await.unwrap(),
            Some(4)
        );
    }
}
