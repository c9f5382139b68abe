#!/usr/bin/env bash
# The project's test command (README, CI): fetches the test data once, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup-data.sh
# the code as rustfmt writes it (rustfmt.toml), before anything is built
cargo fmt --all --check
# lints as errors (the allow-list, each with its reason, is in the crates' Cargo.toml [lints.clippy])
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked "$@"
