//! A retry store is not a transport, as a user's crate sees it: `App::builder().backend(postgres)`
//! and `Tiered::new(postgres, transport)` are compile errors that say where a retry store goes
//! (tests/ui/retry_store/*.stderr), not failures at start.
//!
//! A compiler error lists the types that do implement the trait, and that list depends on the
//! features, so this runs in a build of this package with PostgreSQL alone:
//! `cargo test -p retry-kafka --no-default-features --features postgres --test retry_store`
//! (`scripts/test.sh`).

#[cfg(all(feature = "postgres", not(feature = "kafka"), not(feature = "redis")))]
#[test]
fn a_retry_store_cannot_be_configured_as_a_transport() {
    trybuild::TestCases::new().compile_fail("tests/ui/retry_store/*.rs");
}
