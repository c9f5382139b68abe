#!/usr/bin/env bash
# The class set-up of issue #14, as CI runs it (after tests/notebooks.sh, whose per-user install
# leaves an evcxr_jupyter of the right version that the shared install copies instead of compiling):
#
#  1. the instructor: kernel-setup/install.sh --shared PREFIX (default /tmp/moe-lens-shared-ci)
#  2. a student: a second Unix user (useradd, when this runs as root; else a second HOME of this
#     user) with no Rust on PATH runs PREFIX/src/kernel-setup/install.sh: timed (<= 60 s), with no
#     rustc or cargo process seen meanwhile, and nothing written under PREFIX
#  3. both notebooks run as that student on the demo model, from the student's own copies; the first
#     `:dep` cell takes <= MOE_LENS_FIRST_DEP_MAX seconds (default 30) and compiles no dependency
#     (the build folder's .rlib files are the warm build's, unchanged); tests/check_notebooks.py
#     checks the executed copies (written to OUT_DIR, default target/shared-notebooks)
#
#   tests/shared-install.sh [OUT_DIR]
# Settings: MOE_LENS_SHARED_CI_PREFIX (PREFIX), MOE_LENS_SHARED_CI_FROM=BUNDLE (the instructor's run
# is `install.sh --from BUNDLE --shared PREFIX`, as on a server without network or Rust:
# tests/offline-install.sh --full), MOE_LENS_SETUP_MAX, MOE_LENS_FIRST_DEP_MAX, MOE_LENS_CUDA_STUDENT=1
# (and MOE_LENS_CUDA_DRIVER_DIR): also the student's first CUDA cell (step 5).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
out=${1:-target/shared-notebooks}
mkdir -p "$out"; out=$(cd "$out" && pwd)
prefix=${MOE_LENS_SHARED_CI_PREFIX:-/tmp/moe-lens-shared-ci}
setup_max=${MOE_LENS_SETUP_MAX:-60}
dep_max=${MOE_LENS_FIRST_DEP_MAX:-30}
fail() { echo "shared-install: FAILED: $*" >&2; exit 1; }

# 1. the instructor's install (kept between runs: only what changed is redone). With CC set, as
# `module load gcc` sets it (students have none): ring's build script watches CC, and the students'
# first :dep cell used to compile ring and all above it again (kernel-setup/build-env.sh); step 3
# checks that nothing is.
t0=$(date +%s)
from=(); [ -n "${MOE_LENS_SHARED_CI_FROM:-}" ] && from=(--from "$MOE_LENS_SHARED_CI_FROM")
CC=${CC:-$(command -v cc)} bash kernel-setup/install.sh "${from[@]}" --shared "$prefix"
echo "shared-install: instructor's install took $(( $(date +%s) - t0 )) s"

# 2. the student, fresh every run
student=moe-lens-student
if [ "$(id -u)" = 0 ] && command -v useradd >/dev/null 2>&1 && command -v runuser >/dev/null 2>&1; then
  if id "$student" >/dev/null 2>&1; then
    userdel -r "$student" >/dev/null 2>&1 || true
  fi
  rm -rf "/var/tmp/moe-lens-$student" "/tmp/moe-lens-$student"
  useradd -m -s /bin/bash "$student"
  shome=$(getent passwd "$student" | cut -d: -f6)
  as_student() { runuser -u "$student" -- env -i HOME="$shome" USER="$student" LOGNAME="$student" \
                   PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 "$@"; }
  who="the Unix user $student"
else
  student=$(id -un)
  shome=$(mktemp -d /tmp/moe-lens-student-home.XXXXXX)
  rm -rf "/var/tmp/moe-lens-$student"/shared-* "/tmp/moe-lens-$student"/shared-*
  as_student() { env -i HOME="$shome" USER="$student" LOGNAME="$student" PATH=/usr/local/bin:/usr/bin:/bin \
                   LANG=C.UTF-8 "$@"; }
  who="a second HOME ($shome) of $student (not root: no second user)"
fi
echo "shared-install: student: $who"
as_student bash -c 'command -v cargo || command -v rustc' && fail "the student's PATH has Rust: the test would prove nothing"

marker=$(mktemp); sleep 1
watch=$(mktemp)
( while :; do pgrep -u "$student" -a -x 'rustc|cargo|cc|ld' >> "$watch" 2>/dev/null || true; sleep 0.1; done ) &
watcher=$!
t1=$(date +%s%N)
as_student bash "$prefix/src/kernel-setup/install.sh"
setup_ms=$(( ($(date +%s%N) - t1) / 1000000 ))
kill "$watcher"; wait "$watcher" 2>/dev/null || true
[ -s "$watch" ] && fail "a compiler ran during the student's set-up: $(sort -u "$watch" | head -5)"
echo "shared-install: student set-up took $((setup_ms / 1000)).$((setup_ms % 1000 / 100)) s, no compiler ran"
[ "$setup_ms" -le $((setup_max * 1000)) ] || fail "the student's set-up took more than $setup_max s"
if [ "$student" != "$(id -un)" ]; then
  as_student touch "$prefix/student-was-here" 2>/dev/null && fail "the student can write into $prefix"
fi

# 3. the notebooks, as the student, from their own copies
lab=$shome/moe-lens-lab
slot=$(as_student cat "$shome/.local/share/moe-lens/.seeded")
[ -n "$slot" ] && [ -d "$slot/target" ] || fail "the set-up made no build folder ($slot)"
rlibs() { find "$slot/target" -name '*.rlib' -printf '%P %T@ %s\n' | sort; }
before=$(rlibs)
[ -n "$before" ] || fail "the build folder $slot has no compiled dependencies"
sout=$shome/executed
as_student mkdir -p "$sout"
for nb in "$lab"/notebooks/*.ipynb; do
  name=$(basename "$nb")
  echo "shared-install: $name as $student"
  as_student env MOE_LENS_MODEL=demo MOE_LENS_NO_PROGRESS=1 ${MOE_LENS_SENTENCES:+MOE_LENS_SENTENCES=$MOE_LENS_SENTENCES} \
    "$prefix/lab-venv/bin/python" "$prefix/src/kernel-setup/execute.py" --run "$nb" --out "$sout/$name" \
    || { cp "$sout/$name" "$out/" 2>/dev/null || true; fail "$name did not run as the student"; }
  cp "$sout/$name" "$out/$name"
done
[ "$(rlibs)" = "$before" ] || fail "the first :dep cell recompiled dependencies: $(diff <(echo "$before") <(rlibs) | head -5)"
[ -z "$(find "$prefix" -newer "$marker" -print -quit)" ] || fail "something under $prefix changed: $(find "$prefix" -newer "$marker" | head -3)"
python3 - "$out" "$dep_max" <<'PY'
import json, sys
from pathlib import Path
out, limit = Path(sys.argv[1]), float(sys.argv[2])
for nb in sorted(out.glob("*.ipynb")):
    cells = json.loads(nb.read_text())["cells"]
    dep = next(c for c in cells if c["cell_type"] == "code" and ":dep" in "".join(c["source"]))
    s = dep["metadata"].get("moe_lens", {}).get("seconds")
    print(f"shared-install: {nb.name}: first :dep cell {s} s (limit {limit:.0f} s)")
    if s is None or s > limit:
        sys.exit(f"shared-install: FAILED: the first :dep cell of {nb.name} took {s} s")
PY
python3 tests/check_notebooks.py "$out"

# 4. a classmate's cargo config. cargo reads .cargo/config.toml in every folder above the one it
# builds in, and such a file can name a program it runs (rustc-wrapper): in /var/tmp or /tmp, which
# all users can write, a classmate's program would run as the student (kernel-setup/build-dir.sh).
if [ "$student" != "$(id -un)" ]; then
  mate=moe-lens-classmate
  id "$mate" >/dev/null 2>&1 || useradd -m -s /bin/bash "$mate"
  as_mate() { runuser -u "$mate" -- env -i HOME="$(getent passwd "$mate" | cut -d: -f6)" PATH=/usr/bin:/bin "$@"; }
  for b in /var/tmp /tmp; do
    [ -d "$b/.cargo" ] && [ "$(stat -c %U "$b/.cargo")" = root ] || fail "the root install made no $b/.cargo guard"
    as_mate bash -c "echo '[build]' > $b/.cargo/config.toml" 2>/dev/null && fail "a classmate could write $b/.cargo/config.toml"
  done
  # a folder all can write (as /tmp is where no guard was made), holding the classmate's config
  open=$(mktemp -d /tmp/moe-lens-open.XXXXXX); chmod 1777 "$open"
  as_mate bash -c "mkdir '$open/.cargo' && printf '#!/bin/sh\nid -un >> $open/ran-as\nexec \"\$@\"\n' > '$open/evil' \
    && chmod 755 '$open/evil' && printf '[build]\nrustc-wrapper = \"$open/evil\"\n' > '$open/.cargo/config.toml'"
  echo "shared-install: a classmate's cargo config above MOE_LENS_BUILD_DIR=$open/build"
  as_student env MOE_LENS_BUILD_DIR="$open/build" MOE_LENS_NO_PROGRESS=1 \
    "$prefix/lab-venv/bin/python" "$prefix/src/kernel-setup/execute.py" --warm-up "$lab/notebooks" --kernel moe-lens-rust \
    || fail "the student's kernel did not work with a classmate's cargo config in $open"
  [ -e "$open/ran-as" ] && fail "the classmate's program ran as: $(sort -u "$open/ran-as" | tr '\n' ' ')"
  [ -e "$open/build" ] && fail "the student's kernel built in $open/build, below the classmate's config"
  rm -rf "$open"
  echo "shared-install: the kernel did not build below it and the classmate's program never ran"
fi
# 5. (opt-in: MOE_LENS_CUDA_STUDENT=1, after an instructor's install that built PREFIX/warm/cuda) the
# student's first CUDA `:dep` cell: timed, and nothing below the cell recompiled. On a machine with
# no GPU driver, MOE_LENS_CUDA_DRIVER_DIR names a folder with a libcuda.so.1 that the cell library
# can be loaded with (e.g. a link to the link-time stand-in of ../shared/notes/cuda.md).
if [ "${MOE_LENS_CUDA_STUDENT:-0}" = 1 ]; then
  [ -d "$prefix/warm/cuda/target" ] || fail "MOE_LENS_CUDA_STUDENT=1 but $prefix has no CUDA warm build"
  as_cuda() { as_student env MOE_LENS_KERNEL_MODE=cuda ${MOE_LENS_CUDA_DRIVER_DIR:+LD_LIBRARY_PATH=$MOE_LENS_CUDA_DRIVER_DIR} "$@"; }
  as_cuda MOE_LENS_SEED_ONLY=1 "$prefix/kernel/evcxr-kernel"
  cslot=$(as_student cat "$shome/.local/share/moe-lens/.seeded")
  built() { find "$cslot/target" \( -name '*.rlib' -o -name output \) -printf '%P %T@ %s\n' | sort; }
  cbefore=$(built)
  clog=$(mktemp)
  as_cuda MOE_LENS_NO_PROGRESS=1 "$prefix/lab-venv/bin/python" "$prefix/src/kernel-setup/execute.py" \
    --warm-up "$lab/notebooks" --kernel moe-lens-rust | tee "$clog" || fail "the student's first CUDA :dep cell failed"
  [ "$(built)" = "$cbefore" ] || fail "the student's first CUDA :dep cell recompiled: $(diff <(echo "$cbefore") <(built) | grep '^>' | head -5)"
  cs=$(sed -n 's/^ *warm-up cell 0: \([0-9.]*\) s$/\1/p' "$clog" | tail -1)
  echo "shared-install: the student's first CUDA :dep cell: ${cs:-?} s, nothing recompiled"
  python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) <= float(sys.argv[2]) else 1)" "${cs:-1e9}" "$dep_max" \
    || fail "the student's first CUDA :dep cell took more than $dep_max s"
fi
echo "shared-install: passed in $(( $(date +%s) - t0 )) s (student set-up $((setup_ms / 1000)).$((setup_ms % 1000 / 100)) s)"
