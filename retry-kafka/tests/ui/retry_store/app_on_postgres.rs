// PostgreSQL keeps retries only: an app cannot run on it alone.
use retry_kafka::backend::postgres::Postgres;
use retry_kafka::App;

fn main() {
    let postgres = Postgres::builder("postgres://app@127.0.0.1/app").build().unwrap();
    let _app = App::builder().backend(postgres);
}
