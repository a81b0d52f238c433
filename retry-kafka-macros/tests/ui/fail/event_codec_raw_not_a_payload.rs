use retry_kafka::prelude::*;

// A number is not raw bytes: it needs a codec that says how it is written.
#[derive(Event)]
#[event(topic = "counts", codec = "raw")]
struct Count(u64);

fn main() {}
