//! Checks the whole set of handlers before any I/O.

use std::collections::HashMap;

use crate::error::ConfigError;
use crate::handlers::HandlerSpec;
use crate::names::{self, NameError};
use crate::policy::TopicRole;
use crate::policy::{TopicNaming, Topology};

/// Fails on the first conflict: two handlers on one topic+group, or one topic name in two
/// roles (a retry topic that is also someone's main topic, say).
pub(crate) fn validate(
    handlers: &[&'static HandlerSpec],
    naming: &TopicNaming,
) -> Result<Vec<Topology>, ConfigError> {
    if handlers.is_empty() {
        return Err(ConfigError::NoHandlers);
    }
    let mut claimed: HashMap<(&str, &str), &HandlerSpec> = HashMap::new();
    for spec in handlers {
        if let Some(first) = claimed.insert((spec.topic(), spec.group()), spec) {
            return Err(ConfigError::DuplicateHandler {
                topic: spec.topic().to_owned(),
                group: spec.group().to_owned(),
                first: describe(first),
                second: describe(spec),
            });
        }
    }
    let topologies: Vec<Topology> = handlers.iter().map(|spec| Topology::of(spec, naming)).collect();
    // Main topics may be shared (one per group); every derived topic has exactly one role.
    let mut roles: HashMap<&str, String> = HashMap::new();
    for (spec, topology) in handlers.iter().zip(&topologies) {
        roles
            .entry(&topology.main)
            .or_insert_with(|| format!("a main topic (of `{}`)", spec.name()));
    }
    for (spec, topology) in handlers.iter().zip(&topologies) {
        for (topic, role) in topology.derived() {
            check_name(topic)?;
            let role = match role {
                TopicRole::DeadLetter => format!("the dead-letter topic of `{}`", spec.name()),
                TopicRole::Parked => format!("the parking queue of `{}`", spec.name()),
                TopicRole::Held => format!("the held topic of `{}`", spec.name()),
                _ => format!("a retry topic of `{}`", spec.name()),
            };
            if let Some(first) = roles.insert(topic, role.clone()) {
                return Err(ConfigError::TopicConflict {
                    topic: topic.to_owned(),
                    first,
                    second: role,
                });
            }
        }
    }
    Ok(topologies)
}

fn describe(spec: &HandlerSpec) -> String {
    format!("`{}` ({})", spec.name(), spec.location())
}

/// Derived names come from user patterns, so they are checked here, by the rule the macros
/// apply to the names they are given (`crate::names`).
fn check_name(topic: &str) -> Result<(), ConfigError> {
    names::check("topic", topic).map_err(|error| ConfigError::Invalid {
        field: "topic_naming",
        reason: match error {
            NameError::Dots { .. } => format!("it makes the topic name {topic:?}, which Kafka reserves"),
            _ => format!("it makes the topic name {topic:?}; use 1-249 of [a-zA-Z0-9._-]"),
        },
    })
}
