#!/usr/bin/env bash
# The project's test command (README, CI): fetches the test data once, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup-data.sh
cargo test --workspace --locked "$@"
