//! Examples and integration tests for retry-kafka.
