//! Key names, in one of two layouts (ARCHITECTURE.md, Redis keys).
//!
//! - [`KeyLayout::Server`] (one server, the layout since the first release): the topic is the
//!   hash tag of every key of the topic, so a topic's keys share one slot.
//! - [`KeyLayout::Cluster`] (Redis Cluster): a partition's keys (its stream, its delay set, its
//!   leases and its hand-off marks) carry the topic *and* the partition as their hash tag, so
//!   the partitions of one topic spread over the shards while what one script touches shares a
//!   slot. A topic's own keys (its partition count, a group's members) keep the topic's tag.

/// Which layout a backend's keys follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyLayout {
    Server,
    Cluster,
}

impl KeyLayout {
    /// The stream of `partition`: `{orders}:3`, on a cluster `{orders:3}`.
    pub(crate) fn stream(self, topic: &str, partition: u32) -> String {
        match self {
            KeyLayout::Server => format!("{{{topic}}}:{partition}"),
            KeyLayout::Cluster => format!("{{{topic}:{partition}}}"),
        }
    }

    pub(crate) fn meta(self, topic: &str) -> String {
        format!("{{{topic}}}:meta")
    }

    /// The delay set `partition`'s retries wait in: one per topic on a server
    /// (`{orders.billing.retry.1}:delayed`), one per partition on a cluster
    /// (`{orders.billing.retry.1:3}:delayed`), beside the stream the retry moves to.
    pub(crate) fn delayed(self, topic: &str, partition: u32) -> String {
        match self {
            KeyLayout::Server => format!("{{{topic}}}:delayed"),
            KeyLayout::Cluster => format!("{{{topic}:{partition}}}:delayed"),
        }
    }

    /// The delay sets of a topic of `partitions` partitions (one on a server).
    pub(crate) fn delay_sets(self, topic: &str, partitions: u32) -> Vec<String> {
        match self {
            KeyLayout::Server => vec![self.delayed(topic, 0)],
            KeyLayout::Cluster => (0..partitions).map(|p| self.delayed(topic, p)).collect(),
        }
    }

    pub(crate) fn members(self, topic: &str, group: &str) -> String {
        format!("{{{topic}}}:members:{group}")
    }

    pub(crate) fn lease(self, topic: &str, group: &str, partition: u32) -> String {
        match self {
            KeyLayout::Server => format!("{{{topic}}}:lease:{group}:{partition}"),
            KeyLayout::Cluster => format!("{{{topic}:{partition}}}:lease:{group}"),
        }
    }

    /// Cluster only: the mark that the hand-off of `source` (`stream/group/id`) was written to
    /// `target` (a stream or delay set, whose slot it shares); it holds the entry's stream ID.
    pub(crate) fn handed(self, target: &str, source: &str) -> String {
        let tag = match (target.find('{'), target.find('}')) {
            (Some(open), Some(close)) if open < close => &target[open..=close],
            _ => target,
        };
        format!("{tag}:handed:{source}")
    }
}

#[cfg(test)]
mod tests {
    use super::KeyLayout;

    #[test]
    fn a_cluster_keeps_a_partition_in_one_slot_and_a_server_a_topic() {
        let cluster = KeyLayout::Cluster;
        assert_eq!(cluster.stream("orders", 3), "{orders:3}");
        assert_eq!(
            cluster.delayed("orders.b.retry.1", 3),
            "{orders.b.retry.1:3}:delayed"
        );
        assert_eq!(cluster.lease("orders", "b", 3), "{orders:3}:lease:b");
        assert_eq!(
            cluster.handed("{orders.b.retry.1:3}:delayed", "{orders:3}/b/1-0"),
            "{orders.b.retry.1:3}:handed:{orders:3}/b/1-0"
        );
        let server = KeyLayout::Server;
        assert_eq!(server.stream("orders", 3), "{orders}:3");
        assert_eq!(
            server.delayed("orders.b.retry.1", 3),
            "{orders.b.retry.1}:delayed"
        );
        assert_eq!(server.lease("orders", "b", 3), "{orders}:lease:b:3");
        assert_eq!(server.delay_sets("t", 4).len(), 1);
    }
}
