#!/usr/bin/env bash
# A short fuzz run of every target for CI: each starts from its committed corpus (fuzz/corpus/<t>,
# read only) and mutates for FUZZ_SECONDS (default 15) seconds; any crash, panic, timeout or
# runaway allocation fails the script, and libFuzzer leaves the input in fuzz/artifacts/<t>/.
#
# Needs cargo-fuzz (installed here if missing). Stable Rust works: RUSTC_BOOTSTRAP=1 lets cargo-fuzz
# pass its -Z flags, and --sanitizer none skips AddressSanitizer (which needs a nightly std). The
# first build compiles every dependency with coverage instrumentation (about 10-15 minutes on 2
# cores; later runs reuse fuzz/target).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup-data.sh
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --version 0.13.2 --locked
secs=${FUZZ_SECONDS:-15}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd fuzz
export RUSTC_BOOTSTRAP=1
cargo fuzz build --sanitizer none
for t in tokens config corpus safetensors_header gguf_header; do
  mkdir -p "$work/$t"
  echo "fuzz-smoke: $t for ${secs}s" >&2
  if ! cargo fuzz run --sanitizer none "$t" "$work/$t" "corpus/$t" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 -print_final_stats=1 \
      >"$work/$t.log" 2>&1; then
    tail -n 40 "$work/$t.log" >&2
    echo "fuzz-smoke: $t failed; the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "$work/$t.log" | sed "s/^/  $t /" >&2 || true
done
echo "fuzz-smoke: all targets ran without a failure" >&2
