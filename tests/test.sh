#!/usr/bin/env bash
# The project's test command (README, CI): fetches the test data once, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup-data.sh
# the PNG test (below) reads Hangul and kana back from the rendered figures: it needs a CJK font
if ! fc-list :lang=ko 2>/dev/null | grep -q .; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: no CJK font: installing fonts-noto-cjk (apt-get, once)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-noto-cjk fontconfig >/dev/null
  else
    echo "test.sh: no CJK font (fc-list :lang=ko lists none), which the PNG test needs: install one" \
      "(Debian/Ubuntu: sudo apt-get install fonts-noto-cjk), then run this again" >&2
    exit 1
  fi
fi
# the code as rustfmt writes it (rustfmt.toml), before anything is built
cargo fmt --all --check
# lints as errors (the allow-list, each with its reason, is in the crates' Cargo.toml [lints.clippy])
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked "$@"
# the handouts' master -> student / solution split and the HTML handouts' offline check (#20)
python3 tests/test_handouts.py
# PNG export (the optional `png` feature: resvg with the system's fonts; needs a CJK font such as
# fonts-noto-cjk): figures read back at the size and DPI asked, with Hangul and kana drawn
cargo test -p moe-lens --features png --locked --test png
