//! The embedded Kafka cluster: librdkafka's in-process mock cluster, so the full Kafka path
//! runs on a machine with nothing installed.

use std::ffi::{CStr, CString};
use std::time::Duration;

use rdkafka::bindings as rdsys;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer as _};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use crate::error::BackendError;

/// An in-process Kafka cluster (librdkafka's mock cluster): real Kafka protocol on loopback,
/// consumer groups, offsets, headers, pause/resume; nothing survives the process.
///
/// It lives as long as the last [`Kafka`](super::Kafka) handle that uses it, so it always
/// outlives its clients.
pub struct EmbeddedKafka {
    cluster: *mut rdsys::rd_kafka_mock_cluster_t,
    bootstrap: String,
    /// The librdkafka handle that hosts the mock cluster; destroyed after it.
    _host: BaseProducer,
}

// SAFETY: the mock cluster runs on its own librdkafka thread; every mock API call used here
// (`rd_kafka_mock_topic_create`, `..._broker_set_down/up`, `..._destroy`) posts an operation to
// that thread's queue and waits for the reply, so the pointer may be used from any thread.
unsafe impl Send for EmbeddedKafka {}
unsafe impl Sync for EmbeddedKafka {}

impl EmbeddedKafka {
    /// Starts a mock cluster of `brokers` brokers, tuned so group joins and rebalances take
    /// well under a second instead of librdkafka's default 3 s initial rebalance delay.
    pub fn start(brokers: i32) -> Result<Self, BackendError> {
        let host: BaseProducer = ClientConfig::new().create().map_err(transport)?;
        // SAFETY: the host handle is valid and outlives the cluster (field order in Drop).
        let cluster = unsafe { rdsys::rd_kafka_mock_cluster_new(host.client().native_ptr(), brokers) };
        if cluster.is_null() {
            return Err(transport("librdkafka could not create the mock cluster"));
        }
        // SAFETY: `cluster` is a live mock cluster; the returned string is owned by it.
        let bootstrap = unsafe {
            rdsys::rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, 0);
            CStr::from_ptr(rdsys::rd_kafka_mock_cluster_bootstraps(cluster))
                .to_string_lossy()
                .into_owned()
        };
        Ok(Self {
            cluster,
            bootstrap,
            _host: host,
        })
    }

    /// The `bootstrap.servers` of the cluster.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Creates `topic` (the mock cluster does not implement the CreateTopics request).
    pub fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), BackendError> {
        let name = CString::new(topic).map_err(transport)?;
        // SAFETY: live cluster, NUL-terminated name.
        let error =
            unsafe { rdsys::rd_kafka_mock_topic_create(self.cluster, name.as_ptr(), partitions as i32, 1) };
        check(error, topic)
    }

    /// Takes broker `id` (1-based) down, as a crash or network partition would.
    pub fn broker_down(&self, id: i32) -> Result<(), BackendError> {
        // SAFETY: live cluster.
        check(
            unsafe { rdsys::rd_kafka_mock_broker_set_down(self.cluster, id) },
            "broker",
        )
    }

    /// Brings broker `id` back.
    pub fn broker_up(&self, id: i32) -> Result<(), BackendError> {
        // SAFETY: live cluster.
        check(
            unsafe { rdsys::rd_kafka_mock_broker_set_up(self.cluster, id) },
            "broker",
        )
    }

    /// Makes the next `count` produce requests fail with a retriable broker error for longer
    /// than the producer retries, so sends fail as in an outage.
    pub fn fail_next_produces(&self, count: usize) {
        let errors = vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; count];
        // SAFETY: live cluster; librdkafka copies the error array.
        unsafe {
            rdsys::rd_kafka_mock_push_request_errors_array(
                self.cluster,
                RDKafkaApiKey::Produce as i16,
                errors.len(),
                errors.as_ptr(),
            )
        }
    }

    /// Settings that make consumer groups on this cluster fast to join and rebalance.
    pub(crate) fn consumer_defaults() -> [(&'static str, String); 3] {
        [
            ("session.timeout.ms", "1500".into()),
            ("heartbeat.interval.ms", "300".into()),
            (
                "topic.metadata.refresh.interval.ms",
                Duration::from_millis(500).as_millis().to_string(),
            ),
        ]
    }
}

impl Drop for EmbeddedKafka {
    fn drop(&mut self) {
        // SAFETY: created in `start`, destroyed once; clients are gone (they hold the Arc).
        unsafe { rdsys::rd_kafka_mock_cluster_destroy(self.cluster) };
    }
}

fn check(error: RDKafkaRespErr, what: &str) -> Result<(), BackendError> {
    if error == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
        Ok(())
    } else {
        Err(transport(format!("mock cluster refused ({what}): {error:?}")))
    }
}

fn transport(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> BackendError {
    BackendError::Transport {
        backend: "kafka",
        source: error.into(),
    }
}
