#!/usr/bin/env bash
# Executes every notebook in notebooks/ headlessly on the installed kernel ("moe-lens-rust", set up
# by kernel-setup/install.sh) and writes the executed copies, with their outputs, to OUT_DIR.
#
#   tests/run-notebooks.sh OUT_DIR
#
# The notebooks load the model named by MOE_LENS_MODEL (their default: allenai/OLMoE-1B-7B-0924,
# which needs the Hub or its cache). CI sets it to the small test checkpoint:
#   MOE_LENS_MODEL=$PWD/tests/fixtures/olmoe-narrow tests/run-notebooks.sh OUT_DIR
# MOE_LENS_NOTEBOOKS="01 02" runs only the notebooks whose names start with these numbers.
# Per-cell limits: MOE_LENS_DEP_TIMEOUT (default 900 s) for the `:dep` cell, which compiles
# everything on a cold machine; MOE_LENS_CELL_TIMEOUT (default 600 s) for the others.
# Exits non-zero if any cell fails (an error, or anything on stderr: evcxr shows `?` errors and
# panics only there), naming the notebook and the cell. Cells tagged "raises-exception" (the
# notebooks' deliberate error examples) may fail.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
out=${1:?usage: tests/run-notebooks.sh OUT_DIR}
home=${MOE_LENS_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/moe-lens}
py=$home/lab-venv/bin/python
if [ ! -x "$py" ] || ! "$py" -c 'import nbclient' 2>/dev/null; then
  echo "run-notebooks: no lab environment at $home/lab-venv: run kernel-setup/install.sh first" >&2
  exit 1
fi
# Download progress bars go to stderr, which counts as a failing cell here: none in headless runs.
export MOE_LENS_NO_PROGRESS=${MOE_LENS_NO_PROGRESS:-1}
mkdir -p "$out"
out=$(cd "$out" && pwd)
echo "run-notebooks: model ${MOE_LENS_MODEL:-(unset: the notebook default, allenai/OLMoE-1B-7B-0924)}"
"$py" "$repo/kernel-setup/execute.py" --dep-line "$repo/notebooks" >/dev/null

failed=()
t0=$(date +%s)
for nb in "$repo"/notebooks/*.ipynb; do
  name=$(basename "$nb")
  # MOE_LENS_NOTEBOOKS="01 02": only the notebooks whose names start with these (default: all)
  if [ -n "${MOE_LENS_NOTEBOOKS:-}" ] && ! [[ " $MOE_LENS_NOTEBOOKS " == *" ${name%%_*} "* ]]; then
    continue
  fi
  echo "run-notebooks: $name"
  if ! "$py" "$repo/kernel-setup/execute.py" --run "$nb" --out "$out/$name"; then
    failed+=("$name")
  fi
done
echo "run-notebooks: $(( $(date +%s) - t0 )) s in all; executed copies in $out"
if [ ${#failed[@]} -gt 0 ]; then
  echo "run-notebooks: FAILED: ${failed[*]} (see the messages above; the executed copies show the outputs)" >&2
  exit 1
fi
