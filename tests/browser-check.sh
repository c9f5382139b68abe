#!/usr/bin/env bash
# Looks at the executed notebook in a real browser (headless Chromium): the HTML export, and
# JupyterLab opening the saved notebook untrusted and trusted; the explorer (issue 16) driven with
# real input events, there and as `moe-lens trace --format html` writes it. Screenshots and dumped DOMs go to
# OUT_DIR/browser/. Needs the output of tests/run-notebooks.sh OUT_DIR and the lab environment of
# kernel-setup/install.sh; installs the Debian packages chromium and fonts-noto-cjk if missing
# (apt-get: needs root).
#
#   tests/browser-check.sh OUT_DIR [--skip-lab]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: tests/browser-check.sh OUT_DIR [--skip-lab]}
shift
home=${MOE_LENS_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/moe-lens}
venv=$home/lab-venv
[ -x "$venv/bin/jupyter" ] || { echo "browser-check: no lab environment at $venv: run kernel-setup/install.sh" >&2; exit 1; }

if ! command -v chromium >/dev/null 2>&1 || ! fc-list 2>/dev/null | grep -q "Noto Sans CJK"; then
  echo "browser-check: installing chromium and fonts-noto-cjk (apt-get)"
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium fonts-noto-cjk
fi
echo "browser-check: $(chromium --version 2>/dev/null | head -1)"
status=0
python3 "$here/browser/check.py" "$out" --jupyter "$venv/bin" "$@" || status=1

# The explorer as the command line writes it (`moe-lens trace --format html`), on the random test
# checkpoint, driven in Chromium and compared with the same trace's JSON export (when the CLI is
# built, as tests/test.sh leaves it). Screenshots: OUT_DIR/browser/cli-explore/.
bin=${CARGO_TARGET_DIR:-$here/../target}/debug/moe-lens
if [ -x "$bin" ] && "$bin" trace --help | grep -q html; then
  cli=$out/browser/cli-explore
  mkdir -p "$cli"
  text="The quick brown fox jumps. 안녕하세요. こんにちは."
  "$bin" trace --model "$here/fixtures/olmoe-narrow" --text "$text" --layer 14 --format html > "$cli/view.html"
  "$bin" trace --model "$here/fixtures/olmoe-narrow" --text "$text" --format json > "$cli/trace.json"
  python3 "$here/browser/explore_check.py" "$cli/view.html" "$cli" --reference "$cli/trace.json" || status=1
else
  echo "browser-check: no moe-lens binary with --format html at $bin: the CLI explorer check is skipped (cargo build -p moe-lens-cli)"
fi
exit $status
