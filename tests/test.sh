#!/usr/bin/env bash
# The project's test command (README, CI): fetches the test data once, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup-data.sh
# the code as rustfmt writes it (rustfmt.toml), before anything is built
cargo fmt --all --check
cargo test --workspace --locked "$@"
