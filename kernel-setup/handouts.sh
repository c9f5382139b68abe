#!/usr/bin/env bash
# One master, three products (issue #20): from every notebook in notebooks/ (the masters: exercise
# cells tagged "exercise", their solutions between `// BEGIN SOLUTION` and `// END SOLUTION`, which
# are comments, so the masters run as they are) it makes
#
#   OUT/student/NN_….ipynb    each solution replaced by a hint and `let answer = "?";` (the check
#                             cells then print "not answered yet" and a hint: every cell runs)
#   OUT/solution/NN_….ipynb   the master without the marker lines
#   OUT/executed/NN_….ipynb   the student version, executed on the lab's kernel
#   OUT/html/NN_….html        the executed student version as one HTML file that opens offline
#                             (figures inline, nothing fetched from the network)
#
#   kernel-setup/handouts.sh OUT [--no-run]
#
# --no-run makes only the student and solution versions (seconds, no kernel needed).
# MOE_LENS_HANDOUTS_REUSE=DIR: a notebook without exercises (its student version is the master
# itself) is not run again when DIR holds its executed master, run on the same model (CI: the demo
# run of tests/notebooks.sh); that copy is exported. The notebooks
# run on the model the environment names, as in the lab (MOE_LENS_MODEL, MOE_LENS_QUANT,
# MOE_LENS_DEVICE; e.g. MOE_LENS_MODEL=demo for handouts that build anywhere in minutes). Needs the
# lab's environment (kernel-setup/install.sh); MOE_LENS_NOTEBOOKS="01 02" makes only those.
# INSTRUCTORS.md ("Handouts") says how to hand them out and how to grade with nbgrader.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
out=${1:?usage: kernel-setup/handouts.sh OUT [--no-run]}
run=1
[ "${2:-}" = --no-run ] && run=0
home=${MOE_LENS_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/moe-lens}
py=$home/lab-venv/bin/python
if [ $run = 1 ] && { [ ! -x "$py" ] || ! "$py" -c 'import nbclient, nbconvert' 2>/dev/null; }; then
  echo "handouts: no lab environment at $home/lab-venv: run kernel-setup/install.sh first (or use --no-run)" >&2
  exit 1
fi
[ $run = 1 ] || py=$(command -v python3)
export MOE_LENS_NO_PROGRESS=${MOE_LENS_NO_PROGRESS:-1}
mkdir -p "$out"/student "$out"/solution
out=$(cd "$out" && pwd)
t0=$(date +%s)
names=()
for nb in "$repo"/notebooks/*.ipynb; do
  name=$(basename "$nb")
  if [ -n "${MOE_LENS_NOTEBOOKS:-}" ] && ! [[ " $MOE_LENS_NOTEBOOKS " == *" ${name%%_*} "* ]]; then
    continue
  fi
  "$py" "$here/handouts.py" split "$nb" --student "$out/student/$name" --solution "$out/solution/$name"
  names+=("$name")
done
if [ $run = 0 ]; then
  echo "handouts: student and solution versions of ${#names[@]} notebook(s) in $out ($(( $(date +%s) - t0 )) s)"
  exit 0
fi
echo "handouts: running the student versions on ${MOE_LENS_MODEL:-the default model}"
mkdir -p "$out"/executed "$out"/html
failed=()
reuse=${MOE_LENS_HANDOUTS_REUSE:-}
for name in "${names[@]}"; do
  if [ -n "$reuse" ] && [ -f "$reuse/$name" ] && [ "$("$py" "$here/handouts.py" exercises "$repo/notebooks/$name")" = 0 ]; then
    cp "$reuse/$name" "$out/executed/$name"
    echo "  $name: no exercise, so the student version is the master: its executed copy from $reuse"
  # from notebooks/, so that the `:dep` line's relative path (and evcxr's build cache) is the lab's
  elif ! "$py" "$here/execute.py" --run "$out/student/$name" --out "$out/executed/$name" --cwd "$repo/notebooks"; then
    failed+=("$name")
    continue
  fi
  "$py" "$here/handouts.py" html "$out/executed/$name" --out "$out/html/${name%.ipynb}.html" || failed+=("$name")
done
echo "handouts: $(( $(date +%s) - t0 )) s in all; $out/{student,solution,executed,html}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "handouts: FAILED: ${failed[*]} (see the messages above)" >&2
  exit 1
fi
