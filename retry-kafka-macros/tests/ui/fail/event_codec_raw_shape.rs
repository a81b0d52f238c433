use retry_kafka::prelude::*;

// `codec = "raw"` takes a struct with one field, the payload.
#[derive(Event)]
#[event(topic = "lines", codec = "raw")]
struct TwoFields {
    text: String,
    received_at: u64,
}

#[derive(Event)]
#[event(topic = "lines", codec = "raw")]
enum Line {
    Text(String),
}

fn main() {}
