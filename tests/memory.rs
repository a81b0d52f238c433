//! The conformance suite on the in-process broker, plus what only virtual time can show.

mod conformance;

use retry_kafka::backend::Record;
use retry_kafka::InMemory;

use conformance::{FaultInjection, Harness};

struct Memory {
    broker: InMemory,
}

impl Harness for Memory {
    type Backend = InMemory;

    fn backend(&self) -> InMemory {
        self.broker.clone()
    }

    async fn create_topic(&self, topic: &str, partitions: u32) {
        self.broker.create_topic(topic, partitions);
    }

    async fn records(&self, topic: &str) -> Vec<Record> {
        self.broker.records(topic)
    }

    async fn committed(&self, topic: &str, group: &str) -> Vec<u64> {
        self.broker.committed(topic, group)
    }

    async fn end_offsets(&self, topic: &str) -> Vec<u64> {
        self.broker.end_offsets(topic)
    }
}

impl FaultInjection for Memory {
    async fn fail_next_sends(&self, topic: &str, count: u32) {
        self.broker.fail_next_sends(topic, count);
    }
}

async fn memory() -> Memory {
    Memory {
        broker: InMemory::new(),
    }
}

conformance_suite!(memory);
fault_injection_suite!(memory);
