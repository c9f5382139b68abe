#!/usr/bin/env bash
# A student's set-up on a server where the instructor ran `kernel-setup/install.sh --shared PREFIX`.
# kernel-setup/install.sh runs this when it finds a shared install: MOE_LENS_SHARED=PREFIX, or the
# script itself lives in PREFIX/src/kernel-setup (so `PREFIX/src/kernel-setup/install.sh` is the
# one command to give students). Nothing is compiled and nothing under PREFIX is written; it takes
# seconds. What it makes, all in your own home (and scratch):
#
#   ~/moe-lens-lab/notebooks/     your copies of the notebooks, the student versions (never overwritten once there)
#   ~/moe-lens-lab/crates, kernel-setup   links to PREFIX/src (the notebooks' `:dep` finds moe-lens)
#   ~/.local/share/moe-lens/      lab-venv (a link to PREFIX/lab-venv), your lab's private run folder
#   ~/.local/share/jupyter/kernels/moe-lens-rust   the kernel spec (runs PREFIX/kernel/evcxr-kernel)
#   /var/tmp/moe-lens-$USER/      your kernels' build folders (0700), copied from the warm build
#
# Settings: MOE_LENS_LAB_DIR (default ~/moe-lens-lab), MOE_LENS_HOME (default
# ~/.local/share/moe-lens), JUPYTER_DATA_DIR (where kernel specs go).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
prefix=${MOE_LENS_SHARED:-}
if [ -z "$prefix" ]; then
  # PREFIX/src/kernel-setup/this script, or PREFIX/bin/moe-lens-student-setup
  for cand in "$here/../.." "$here/.."; do
    if [ -f "$cand/moe-lens-shared.env" ]; then prefix=$(cd "$cand" && pwd); break; fi
  done
fi
die() { echo "moe-lens set-up: $*" >&2; exit 1; }
[ -n "$prefix" ] || die "no shared install found: set MOE_LENS_SHARED=PREFIX (ask your instructor for it)"
[ -f "$prefix/moe-lens-shared.env" ] || die "$prefix is not a moe-lens shared install (no moe-lens-shared.env): check MOE_LENS_SHARED with your instructor"
t0=$(date +%s%N)
# shellcheck disable=SC1091
. "$prefix/moe-lens-shared.env"
home=${MOE_LENS_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/moe-lens}
lab=${MOE_LENS_LAB_DIR:-$HOME/moe-lens-lab}
kernel_name=moe-lens-rust
echo "moe-lens set-up from the shared install $prefix"

# 1. the lab's Python: the shared one, through a link where start-lab.sh looks
mkdir -p "$home"
if [ -L "$home/lab-venv" ] || [ ! -e "$home/lab-venv" ]; then
  ln -sfn "$prefix/lab-venv" "$home/lab-venv"
  echo "  JupyterLab: $prefix/lab-venv"
else
  echo "  JupyterLab: keeping your own $home/lab-venv (remove it to use the shared one)"
fi

# 2. the kernel spec, in your own Jupyter data folder (replaces a per-user one of the same name)
spec=$(mktemp -d)
cp "$prefix/kernel/spec/"* "$spec/"
"$prefix/lab-venv/bin/jupyter" kernelspec install --user --name "$kernel_name" "$spec" >/dev/null 2>&1 \
  || die "could not install the kernel spec into your Jupyter folder (${JUPYTER_DATA_DIR:-~/.local/share/jupyter}): is it writable?"
rm -rf "$spec"
echo "  kernel spec: $kernel_name -> $prefix/kernel/evcxr-kernel"

# 3. your notebooks, next to links to the shared crates and scripts
mkdir -p "$lab/notebooks"
for l in crates kernel-setup; do
  if [ -L "$lab/$l" ] || [ ! -e "$lab/$l" ]; then ln -sfn "$prefix/src/$l" "$lab/$l"
  else die "$lab/$l exists and is not a link to the shared install: move it away"; fi
done
copied=0
for nb in "$prefix/src/notebooks/"*.ipynb; do
  # the student version of the master: each exercise's solution replaced by `let answer = "?";`
  # (kernel-setup/handouts.py; INSTRUCTORS.md, "Handouts")
  if [ ! -e "$lab/notebooks/$(basename "$nb")" ]; then
    "$prefix/lab-venv/bin/python" "$prefix/src/kernel-setup/handouts.py" split "$nb" \
      --student "$lab/notebooks/$(basename "$nb")" >/dev/null || die "could not make the student version of $nb"
    copied=$((copied + 1))
  fi
done
chmod u+w "$lab/notebooks/"*.ipynb
echo "  notebooks: $lab/notebooks ($copied copied, the others kept as you left them)"

# 4. a first build folder, copied from the instructor's warm build (the kernel would do it at its
# first start anyway; done here so that the first `:dep` cell takes seconds)
MOE_LENS_SEED_ONLY=1 "$prefix/kernel/evcxr-kernel"
echo "  build folder: $(cat "$home/.seeded" 2>/dev/null || echo "none (the kernel makes one when it starts)")"

ms=$(( ($(date +%s%N) - t0) / 1000000 ))
printf '  done in %d.%03d s\n' $((ms / 1000)) $((ms % 1000))
cat <<EOF

Start your lab:   $lab/kernel-setup/start-lab.sh --socket
(then follow the two lines it prints: the ssh tunnel and the URL). Which model the notebooks load:
MOE_LENS_MODEL (your instructor says which), MOE_LENS_DEVICE for your GPU slice, see the README. To check your set-up, run a notebook cell with
    moe_lens::doctor::doctor()?
EOF
