//! Topic provisioning at start, the same rule on every backend: the main topic must exist, and
//! each retry and dead-letter topic has at least as many partitions (a failed message keeps its
//! partition number on every hop).

use crate::backend::{Backend, Topic};
use crate::error::BackendError;
use crate::policy::Topology;

/// What [`App::start`](crate::App::start) does about retry and dead-letter topics.
///
/// ```
/// use retry_kafka::app::{App, Provisioning};
/// use retry_kafka::backend::memory::InMemory;
/// let builder = App::builder().backend(InMemory::new()).provisioning(Provisioning::Verify);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Provisioning {
    /// Create the missing ones with the main topic's partition count (the default).
    #[default]
    Create,
    /// Only check that they exist with enough partitions; fail naming the first that does not.
    Verify,
    /// Neither create nor check (topics are managed elsewhere).
    Off,
}

pub(crate) async fn provision<B: Backend>(
    backend: &B,
    topology: &Topology,
    mode: Provisioning,
) -> Result<(), BackendError> {
    let main = &topology.main;
    let main_topic = Topic::main(main.as_str());
    // Where topics are created on use (Redis, in-process), the main topic is created now, so
    // that its retry topics can copy its partition count.
    if let Some(default) = backend.default_partitions() {
        if backend.partitions(&main_topic).await?.is_none() {
            backend.create_topic(&main_topic, default).await?;
        }
    }
    if mode == Provisioning::Off {
        return Ok(());
    }
    let needed = backend
        .partitions(&main_topic)
        .await?
        .ok_or_else(|| BackendError::UnknownTopic {
            topic: main.clone(),
            hint: "; create it first: its retry and dead-letter topics copy its partition count".into(),
        })?;
    for (topic, role) in topology.derived() {
        let derived = Topic::new(topic, role);
        match backend.partitions(&derived).await? {
            Some(actual) if actual < needed => {
                return Err(BackendError::TooFewPartitions {
                    topic: topic.to_owned(),
                    actual,
                    needed,
                    main: main.clone(),
                })
            }
            Some(_) => {}
            None if mode == Provisioning::Create => {
                tracing::info!(%topic, partitions = needed, "creating topic");
                backend.create_topic(&derived, needed).await?;
            }
            None => {
                return Err(BackendError::UnknownTopic {
                    topic: topic.to_owned(),
                    hint: " and topic creation is off (Provisioning::Verify)".into(),
                })
            }
        }
    }
    Ok(())
}
