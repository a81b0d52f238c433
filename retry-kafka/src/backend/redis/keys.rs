//! Key names; the topic is the hash tag of every key that belongs to it, so a topic's keys
//! share one cluster slot.

pub(crate) fn stream(topic: &str, partition: u32) -> String {
    format!("{{{topic}}}:{partition}")
}
pub(crate) fn meta(topic: &str) -> String {
    format!("{{{topic}}}:meta")
}
pub(crate) fn delayed(topic: &str) -> String {
    format!("{{{topic}}}:delayed")
}
pub(crate) fn members(topic: &str, group: &str) -> String {
    format!("{{{topic}}}:members:{group}")
}
pub(crate) fn lease(topic: &str, group: &str, partition: u32) -> String {
    format!("{{{topic}}}:lease:{group}:{partition}")
}
