//! What a user sees when something is wrong: an error returned from `main` prints its message
//! (and its causes), not its `Debug` structure.

use std::process::Command;

use retry_kafka::backend::redis::Redis;
use retry_kafka::error::ConfigError;

#[test]
fn main_without_a_backend_prints_the_message_naming_the_settings() {
    let output = Command::new(env!("CARGO_BIN_EXE_rk-readme-main"))
        .env_remove("KAFKA_BROKERS")
        .env_remove("REDIS_URL")
        .env_remove("RETRY_KAFKA_BACKEND")
        .output()
        .expect("rk-readme-main runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Rust's `main` exits with 1 when it returns an error.
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.starts_with("Error: no backend configured"),
        "stderr: {stderr}"
    );
    for setting in ["KAFKA_BROKERS", "REDIS_URL", "RETRY_KAFKA_BACKEND"] {
        assert!(stderr.contains(setting), "stderr names {setting}: {stderr}");
    }
    assert!(!stderr.contains("NoBackend"), "not the Debug structure: {stderr}");
}

#[test]
fn the_structure_is_still_there_with_the_alternate_form() {
    let error = retry_kafka::Error::from(ConfigError::NoBackend);
    assert!(format!("{error:?}").contains("REDIS_URL"));
    assert_eq!(format!("{error:#?}"), "Config(\n    NoBackend,\n)");
}

#[test]
fn a_redis_backend_built_outside_a_tokio_runtime_is_an_error_not_a_panic() {
    let error = Redis::builder("redis://127.0.0.1:6379")
        .build()
        .err()
        .expect("no runtime");
    assert_eq!(error, ConfigError::NoRuntime { backend: "redis" });
    assert!(error.to_string().contains("tokio runtime"), "{error}");
    // Inside one it builds (and connects on first use).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    Redis::builder("redis://127.0.0.1:6379")
        .build()
        .expect("builds inside a runtime");
}
