//! A codec whose feature is off, as a user's crate sees it: `codec = "msgpack"` without the
//! `msgpack` feature is one error at the codec's name, saying which feature to enable
//! (tests/ui/feature_off/*.stderr).
//!
//! The workspace's test suite turns both features on (features unify across a build), so this
//! runs in a build of this package alone:
//! `cargo test -p retry-kafka --no-default-features --test codec_features` (`scripts/test.sh`).

#[cfg(not(any(feature = "msgpack", feature = "protobuf")))]
#[test]
fn a_codec_whose_feature_is_off_names_the_feature() {
    trybuild::TestCases::new().compile_fail("tests/ui/feature_off/*.rs");
}
