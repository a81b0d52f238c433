// A retry store goes second in a Tiered pair: main topics need a transport.
use retry_kafka::backend::memory::InMemory;
use retry_kafka::backend::postgres::Postgres;
use retry_kafka::backend::Tiered;

fn main() {
    let postgres = Postgres::builder("postgres://app@127.0.0.1/app").build().unwrap();
    let _backend = Tiered::new(postgres, InMemory::new());
}
