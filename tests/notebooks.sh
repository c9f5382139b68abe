#!/usr/bin/env bash
# The notebooks' test (CI runs it after tests/test.sh): sets up the Rust kernel with
# kernel-setup/install.sh (idempotent; about 30 minutes on a fresh 2-core machine, seconds later),
# executes every notebook headlessly on the shipped demo model, on the random test checkpoint and
# on llama.cpp's Q4_K_M file of it (all have OLMoE's 16 layers x 64 experts, top-8), and checks what the executed notebooks show
# (tests/check_notebooks.py); on the demo model also the handouts (kernel-setup/handouts.sh: the
# student versions run and checked, the HTML handouts offline) and tests/python_mistakes.py.
# Executed copies go to OUT_DIR (default target/notebooks/).
#
#   tests/notebooks.sh [OUT_DIR]
#
# Then the browser check on the demo run: headless Chromium opens the executed notebook in
# JupyterLab, untrusted and trusted, and as an HTML export (tests/browser-check.sh; installs the
# Debian packages chromium and fonts-noto-cjk when missing, which needs root or sudo; skip it with
# MOE_LENS_SKIP_BROWSER=1). Screenshots: OUT_DIR/demo/browser/*.png.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/notebooks}
t0=$(date +%s)
bash kernel-setup/install.sh
export MOE_LENS_QUANT=${MOE_LENS_QUANT:-auto}
# demo; the random test checkpoint; the same checkpoint as a llama.cpp Q4_K_M file (by its path)
# (the GGUF file runs notebooks 01 and 02, the load path it exercises; the later notebooks' paths
# are the same once loaded, and CI's 90 minutes are better spent elsewhere)
for model in demo "$PWD/tests/fixtures/olmoe-narrow" "$PWD/tests/fixtures/llamacpp/olmoe-narrow-Q4_K_M.gguf"; do
  name=$(basename "$model")
  rm -rf "${out:?}/$name"
  only=""; [[ $model == *.gguf ]] && only="01 02"
  MOE_LENS_MODEL=$model MOE_LENS_NOTEBOOKS=$only bash tests/run-notebooks.sh "$out/$name"
  MOE_LENS_NOTEBOOKS=$only python3 tests/check_notebooks.py "$out/$name"
done
# the same notebooks through the class's model server (issue #19), on the demo model: `moe-lens
# serve` on a socket in a 0700 folder, MOE_LENS_SERVER set, the cells unchanged; notebook 01 (traces,
# generation, the questions) and 03 (interventions, effect, sweep), the same checks
t1=$(date +%s)
sdir=$(mktemp -d); chmod 700 "$sdir"
cargo build -p moe-lens-cli --locked -q
cp "${CARGO_TARGET_DIR:-target}/debug/moe-lens" "$sdir/moe-lens"
"$sdir/moe-lens" serve --model demo --device cpu --socket "$sdir/s.sock" >"$sdir/serve.log" 2>&1 &
spid=$!
for _ in $(seq 1 240); do [ -S "$sdir/s.sock" ] && break; sleep 0.25; done
[ -S "$sdir/s.sock" ] || { cat "$sdir/serve.log"; echo "notebooks.sh: the model server did not start" >&2; exit 1; }
rm -rf "${out:?}/server"
MOE_LENS_SERVER="$sdir/s.sock" MOE_LENS_MODEL=demo MOE_LENS_NOTEBOOKS="01 03" bash tests/run-notebooks.sh "$out/server"
MOE_LENS_NOTEBOOKS="01 03" python3 tests/check_notebooks.py "$out/server"
grep -q "on the moe-lens server at" "$out/server/01_Router_Analysis.ipynb" \
  || { echo "notebooks.sh: notebook 01 did not load through the server" >&2; exit 1; }
kill "$spid"; wait "$spid" 2>/dev/null || true; rm -rf "$sdir"
echo "notebooks.sh: notebooks 01 and 03 through the model server in $(( $(date +%s) - t1 )) s"
# the handouts (issue #20), on the demo model only: the student versions run (every cell, the
# placeholders included; their checks print hints; a notebook without exercises is its master, whose
# demo run above is reused) and pass the same checks, the HTML handouts are
# built and fetch nothing from the network; then a Python student's mistakes, each stopping its own
# cell with a message that says what to write instead
t1=$(date +%s)
MOE_LENS_MODEL=demo MOE_LENS_HANDOUTS_REUSE="$out/demo" bash kernel-setup/handouts.sh "$out/handouts"
python3 tests/check_notebooks.py "$out/handouts/executed"
python3 kernel-setup/handouts.py offline-check "$out"/handouts/html/*.html
py=${MOE_LENS_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/moe-lens}/lab-venv/bin/python
MOE_LENS_NO_PROGRESS=1 "$py" tests/python_mistakes.py "$out/mistakes"
echo "notebooks.sh: handouts and the mistakes notebook in $(( $(date +%s) - t1 )) s"
if [ "${MOE_LENS_SKIP_BROWSER:-0}" != 1 ]; then
  bash tests/browser-check.sh "$out/demo"
fi
echo "notebooks.sh: all notebooks ran and passed the checks in $(( $(date +%s) - t0 )) s"
