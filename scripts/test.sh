#!/usr/bin/env bash
# The whole test suite, as the README documents it and CI runs it. Installs what the tests
# need first, so it passes on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
command -v cargo >/dev/null || { echo "cargo is missing: install Rust from https://rustup.rs" >&2; exit 1; }
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
cargo --version

# A CI run builds once from a fresh clone: incremental state would only double what target/ holds.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi
# The debug build of the whole suite needs several GiB in target/ (it once ran out of disk on a
# machine that still held other checkouts' builds): say what there is, so a failure for want of
# space is recognised at once.
step "disk"
df -h . | tail -n 1 | awk '{ print "free where target/ goes: " $4 " of " $2 }'

step "test dependencies (pinned, into .tools/)"
./scripts/install-test-deps.sh

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

# The workspace unifies features; code (and its unit tests) behind one backend's feature is
# checked in a build of the runtime with that backend alone.
step "cargo clippy: the runtime with one backend at a time"
for backend in kafka redis postgres; do
  cargo clippy -p retry-kafka --no-default-features --features "$backend" --all-targets -- -D warnings
done

# Warnings denied: the runtime with its own default features (a link to an item behind a feature
# that is off is a warning only there), the workspace (features unified, the root package's on;
# the macros crate included) and the workspace with every feature, as docs.rs builds it. The
# tool's binary would write its docs where the runtime crate's go (target/doc/retry_kafka), so
# it is `doc = false` and documented on its own, first, with the workspace's features (so it
# reuses what clippy built).
step "cargo doc: the runtime alone, the workspace, --all-features (RUSTDOCFLAGS=-D warnings)"
export RUSTDOCFLAGS="-D warnings"
cargo doc --no-deps --workspace --bin retry-kafka
cargo doc --no-deps -p retry-kafka
cargo doc --no-deps --workspace
cargo doc --no-deps --workspace --all-features
unset RUSTDOCFLAGS

step "cargo test (unit, integration, trybuild, doc tests)"
cargo test --workspace --no-fail-fast

# The workspace build turns on every codec feature (features unify), so a codec whose feature is
# off is checked in a build of the runtime alone: the error that names the feature to enable.
step "cargo test: codecs with their features off"
cargo test -p retry-kafka --no-default-features --test codec_features

# A retry store (PostgreSQL) given as a transport is a compile error; the error lists the
# backends the build has, so it is checked in a build with PostgreSQL alone.
step "cargo test: a retry store is not a transport"
cargo test -p retry-kafka --no-default-features --features postgres --test retry_store

step "all tests passed"
du -sh target 2>/dev/null | awk '{ print "target/ holds " $1 }' 
