#!/usr/bin/env bash
# The instructor's one-time install for a whole class (run as `kernel-setup/install.sh --shared
# PREFIX`; root is not needed when PREFIX is writable). Everything goes into PREFIX, readable by all:
#
#   PREFIX/rust/          a copy of this Rust toolchain (students need no Rust of their own)
#   PREFIX/bin/           evcxr_jupyter (copied from an install of the right version, else compiled)
#   PREFIX/lab-venv/      JupyterLab (the lab's pinned versions)
#   PREFIX/vendor/        every crate the notebooks' moe-lens needs (`cargo vendor`): no network later
#   PREFIX/src/           the notebooks, their moe-lens crate and these scripts
#   PREFIX/warm/cpu/      the notebooks' `:dep` build, done once (and warm/cuda/ with nvcc and a GPU)
#   PREFIX/kernel/        the shared kernel (shared-kernel.sh) and its kernel spec
#   PREFIX/moe-lens-shared.env   what the scripts read to find all this
#
# Then each student runs PREFIX/src/kernel-setup/install.sh (or their own clone's, with
# MOE_LENS_SHARED=PREFIX): about ten seconds, nothing compiled; see kernel-setup/student-setup.sh.
#
#   kernel-setup/install.sh --shared PREFIX [--kernelspec-system [JUPYTER_PREFIX]] [--from BUNDLE.tar]
#
#   --from BUNDLE.tar     a server without network: everything from a bundle made with
#                         kernel-setup/bundle.sh (sums checked; its Rust when it has one, its vendored
#                         crates, its wheels with pip --no-index, its tokenizer; evcxr_jupyter compiled
#                         offline from its crate unless yours is the same version)
#
#   --kernelspec-system   also install the kernel spec "moe-lens-rust" for every user of this
#                         machine's Jupyter (JupyterHub): into JUPYTER_PREFIX/share/jupyter/kernels
#                         (default: jupyter's system folder, /usr/local/share/jupyter/kernels;
#                         The Littlest JupyterHub: /opt/tljh/user)
#
# Settings as kernel-setup/install.sh (EVCXR_VERSION, PYTHON, MOE_LENS_CUDA, CUDA_COMPUTE_CAP,
# MOE_LENS_REWARM=1, MOE_LENS_WARMUP_TIMEOUT). Safe to run again: done steps are skipped; after a
# `git pull` it copies the new sources and rebuilds the warm build, and students' kernels pick it up
# at their next start.
set -Eeuo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
prefix=""
from=""
system_spec=0
system_prefix=""
while [ $# -gt 0 ]; do
  case $1 in
    --shared) prefix=${2:?--shared needs a folder}; shift 2 ;;
    --shared=*) prefix=${1#--shared=}; shift ;;
    --kernelspec-system)
      system_spec=1; shift
      if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then system_prefix=$1; shift; fi ;;
    --kernelspec-system=*) system_spec=1; system_prefix=${1#--kernelspec-system=}; shift ;;
    --from) from=${2:?--from needs the bundle (a tar from kernel-setup/bundle.sh)}; shift 2 ;;
    --from=*) from=${1#--from=}; shift ;;
    *) echo "install.sh --shared: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$prefix" ] || { echo "install.sh --shared PREFIX: give the folder" >&2; exit 2; }
mkdir -p "$prefix"
prefix=$(cd "$prefix" && pwd)
[ -n "$from" ] && from=$(cd "$(dirname "$from")" && pwd)/$(basename "$from")
evcxr_version=${EVCXR_VERSION:-0.22.0}
py=${PYTHON:-python3}
kernel_name=moe-lens-rust
umask 022  # everything here is for every user to read
# shellcheck source=kernel-setup/lab-python.sh
. "$here/lab-python.sh"
# shellcheck source=kernel-setup/offline.sh
. "$here/offline.sh"
# shellcheck source=kernel-setup/build-env.sh
. "$here/build-env.sh"

t_start=$(date +%s)
n=0; step=start; hint=""
begin() { n=$((n + 1)); step=$1; hint=$2; printf '\n[%d] %s\n' "$n" "$step"; }
say() { printf '    %s\n' "$*"; }
on_err() {
  local rc=$?
  trap - ERR
  printf '\ninstall.sh --shared: step [%d] "%s" FAILED (exit %s, line %s).\n' "$n" "$step" "$rc" "$1" >&2
  [ -n "$hint" ] && printf 'How to fix: %s\n' "$hint" >&2
  printf 'Then run it again: the steps already done are skipped.\n' >&2
  exit "$rc"
}
trap 'on_err $LINENO' ERR
echo "moe-lens shared install into $prefix (from $repo)"

# ------------------------------------------------------------------------------------------------
if [ -n "$from" ]; then
  begin "the offline bundle $from (sums, versions)" \
    "make the bundle again with kernel-setup/bundle.sh on a machine with network, and copy it with its .sha256"
  # no network from here on: cargo, pip and the Hub are told so, and a stray attempt fails at once
  export CARGO_NET_OFFLINE=true PIP_NO_INDEX=1 HF_HUB_OFFLINE=1
  bundle_open "$from" "$prefix/.bundle" "$repo"
fi

# ------------------------------------------------------------------------------------------------
begin "Rust toolchain, copied into $prefix/rust" \
  "Rust >= 1.95 must be on PATH for the instructor (rustup or a system install); students need none"
if [ -f "$HOME/.cargo/env" ]; then . "$HOME/.cargo/env"; fi
if [ -n "$from" ] && [ "$MOE_LENS_BUNDLE_WITH_RUST" = 1 ]; then
  say "the bundle's Rust $MOE_LENS_BUNDLE_RUSTC"
  export PATH="$bundle/rust/bin:$PATH"
fi
command -v rustc >/dev/null 2>&1 || {
  if [ -n "$from" ]; then
    hint="offline, Rust must be on this machine already: rustc and cargo $MOE_LENS_BUNDLE_RUSTC (a system package, 'module load rust', or Rust's standalone installer from https://forge.rust-lang.org/infra/other-installation-methods.html, carried over), or make the bundle with 'bundle.sh OUT.tar --with-rust'"
  fi
  say "no rustc on PATH"; false; }
command -v cc >/dev/null 2>&1 || { hint="a C compiler/linker 'cc' must be installed for everyone (gcc)"; false; }
if [ -n "$from" ]; then bundle_check_rustc; fi
sysroot=$(rustc --print sysroot)
# rust-src: evcxr's type inference reads the standard library's sources (rustup's default profile
# leaves them out); the copy below and the vendored crates (step "vendored") then include them
if [ ! -f "$sysroot/lib/rustlib/src/rust/library/Cargo.toml" ]; then
  if [ -z "$from" ] && command -v rustup >/dev/null 2>&1 && rustup component add rust-src >/dev/null 2>&1 \
     && [ -f "$sysroot/lib/rustlib/src/rust/library/Cargo.toml" ]; then
    say "added rust-src to $sysroot (rustup component add rust-src)"
  else
    say "WARNING: no rust-src in $sysroot ('rustup component add rust-src'): cells run, but evcxr cannot infer some types (\"let x = ...;\")"
  fi
fi
if [ -x "$prefix/rust/bin/rustc" ] && [ "$("$prefix/rust/bin/rustc" -vV 2>/dev/null)" = "$(rustc -vV)" ] \
   && [ -x "$prefix/rust/bin/cargo" ]; then
  say "already there: $("$prefix/rust/bin/rustc" --version)"
  if [ -d "$sysroot/lib/rustlib/src" ] && [ ! -d "$prefix/rust/lib/rustlib/src" ]; then
    cp -R "$sysroot/lib/rustlib/src" "$prefix/rust/lib/rustlib/src"
    say "added rust-src to the copy"
  fi
else
  [ -x "$sysroot/bin/cargo" ] || { hint="this rustc's sysroot ($sysroot) has no cargo: install Rust with rustup"; false; }
  rm -rf "$prefix/rust.new"
  mkdir -p "$prefix/rust.new"
  (cd "$sysroot" && tar --exclude=./share/doc -cf - .) | (cd "$prefix/rust.new" && tar -xf -)
  rm -rf "$prefix/rust"; mv "$prefix/rust.new" "$prefix/rust"
  say "copied $sysroot ($(du -sh "$prefix/rust" | cut -f1)): $("$prefix/rust/bin/rustc" --version)"
fi
rustc_v=$("$prefix/rust/bin/rustc" --version | awk '{print $2}')
if [ "$(printf '%s\n' "1.95.0" "$rustc_v" | sort -V | head -1)" != "1.95.0" ]; then
  hint="evcxr_jupyter $evcxr_version needs Rust >= 1.95: rustup update stable, then run this again"; false
fi
export PATH="$prefix/rust/bin:$PATH"
unset RUSTUP_TOOLCHAIN CARGO_TARGET_DIR RUSTFLAGS RUSTC_WRAPPER

# ------------------------------------------------------------------------------------------------
begin "evcxr_jupyter $evcxr_version into $prefix/bin" \
  "cargo install --locked evcxr_jupyter --version $evcxr_version --root $prefix must work (network)"
mkdir -p "$prefix/bin"
# (evcxr_jupyter has no --version: the installed version is what cargo's list or our marker says)
if [ -x "$prefix/bin/evcxr_jupyter" ] && [ "$(cat "$prefix/bin/.evcxr_jupyter.version" 2>/dev/null)" = "$evcxr_version" ]; then
  say "already there"
else
  found=""
  if command -v cargo >/dev/null 2>&1 && [ "${MOE_LENS_EVCXR_FROM_BUNDLE:-0}" != 1 ] \
     && [ "$(cargo install --list 2>/dev/null | sed -n 's/^evcxr_jupyter v\([0-9.]*\)\( (.*)\)\{0,1\}:$/\1/p' | head -1)" = "$evcxr_version" ]; then
    for cand in "${CARGO_INSTALL_ROOT:+$CARGO_INSTALL_ROOT/bin/evcxr_jupyter}" "${CARGO_HOME:-$HOME/.cargo}/bin/evcxr_jupyter"; do
      if [ -n "$cand" ] && [ -x "$cand" ]; then found=$cand; break; fi
    done
  fi
  if [ -n "$found" ]; then
    cp "$found" "$prefix/bin/evcxr_jupyter.new" && mv "$prefix/bin/evcxr_jupyter.new" "$prefix/bin/evcxr_jupyter"
    say "copied your $found (the same version): no compiling"
  else
    say "compiling it (about 5 minutes on 16 cores, 16 on 2)"
    t0=$(date +%s)
    tmp_target=$(mktemp -d)
    if [ -n "$from" ]; then
      [ "$MOE_LENS_BUNDLE_EVCXR" = "$evcxr_version" ] \
        || { hint="the bundle has evcxr_jupyter $MOE_LENS_BUNDLE_EVCXR: run with EVCXR_VERSION=$MOE_LENS_BUNDLE_EVCXR"; false; }
      say "offline, from the bundle's crate and vendored crates"
      mapfile -t vendor_cfg < <(bundle_cargo_config "$bundle/vendor")
      CARGO_TARGET_DIR=$tmp_target CARGO_HOME=$prefix/.cargo-offline cargo "${vendor_cfg[@]}" install --offline --locked \
        --path "$bundle/evcxr_jupyter-$evcxr_version" --root "$prefix"
      rm -rf "$prefix/.cargo-offline"
    else
      CARGO_TARGET_DIR=$tmp_target cargo install --locked evcxr_jupyter --version "$evcxr_version" --root "$prefix"
    fi
    rm -rf "$tmp_target" "$prefix/.crates.toml" "$prefix/.crates2.json"
    say "built in $(( $(date +%s) - t0 )) s"
  fi
  echo "$evcxr_version" > "$prefix/bin/.evcxr_jupyter.version"
fi

# ------------------------------------------------------------------------------------------------
begin "JupyterLab in $prefix/lab-venv (${lab_pins[*]})" \
  "Python >= 3.9 with venv is needed (PYTHON=/path/to/python3); delete $prefix/lab-venv to start afresh"
venv=$prefix/lab-venv
# Every user must be able to run the venv's Python, which is a link to the one it was made from: a
# Python in the instructor's home (pyenv, conda) is not reachable for others when that home is 0700.
others_can_run() { # the file and every folder on its way executable by "others"
  local p; p=$(readlink -f "$(command -v "$1" 2>/dev/null || echo "$1")" 2>/dev/null) || return 1
  [ -n "$p" ] && [ -x "$p" ] || return 1
  while [ "$p" != / ]; do
    [ -n "$(find "$p" -maxdepth 0 -perm -o+x 2>/dev/null)" ] || return 1
    p=$(dirname "$p")
  done
}
if [ -x "$venv/bin/python" ] && ! others_can_run "$venv/bin/python"; then
  say "$venv was made from a Python other users cannot run ($(readlink -f "$venv/bin/python")): making it again"
  rm -rf "$venv"
fi
if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
  if ! others_can_run "$py"; then
    for cand in /usr/bin/python3 /usr/local/bin/python3; do
      if others_can_run "$cand" && "$cand" -c 'import venv' 2>/dev/null; then
        say "$py ($(readlink -f "$(command -v "$py")")) cannot be run by other users: using $cand"; py=$cand; break
      fi
    done
    others_can_run "$py" || { hint="set PYTHON to a python3 (>= 3.9, with venv) that every user can run, e.g. the system's /usr/bin/python3"; false; }
  fi
  if [ -n "$from" ]; then bundle_check_python "$py"; fi
  lab_make_venv "$venv" "$py"
fi
missing=$(lab_pins_missing "$venv")
if [ -z "$missing" ]; then say "already installed"; else
  if [ -n "$from" ]; then
    bundle_check_python "$venv/bin/python" \
      || { hint="the bundle's wheels do not fit $venv's Python: delete $venv and set PYTHON, or make the bundle for this Python"; false; }
    say "pip install --no-index --find-links <the bundle's wheels> $missing"
    hint="the bundle's wheels do not fit $(readlink -f "$venv/bin/python") (Python $("$venv/bin/python" -c 'import platform; print(platform.python_version())')): make the bundle on the machine with network with PYTHON set to a Python of this same version; then delete $venv and run this again"
    lab_pip_install "$venv" "$bundle/wheels"
  else
    lab_pip_install "$venv"
  fi
  say "installed: jupyterlab $("$venv/bin/jupyter-lab" --version)"
fi

# ------------------------------------------------------------------------------------------------
begin "sources: notebooks, moe-lens and these scripts into $prefix/src; OLMoE's tokenizer for demo" \
  "tests/setup-data.sh must have fetched the tokenizer "
demo_tok=$repo/crates/moe-lens/data/demo/tokenizer.json
if [ -n "$from" ]; then
  # the bundle's (its sum was checked); setup-data.sh puts it next to the demo model, no download
  mkdir -p "$repo/tests/data/tokenizer"
  cp "$bundle/tokenizer/tokenizer.json" "$repo/tests/data/tokenizer/tokenizer.json"
fi
if [ ! -f "$demo_tok" ] || [ -n "$from" ]; then
  PYTHON="$venv/bin/python" bash "$repo/tests/setup-data.sh" 2>&1 | sed 's/^/    /'
fi
new_src=$prefix/src.new
rm -rf "$new_src"; mkdir -p "$new_src"
(cd "$repo" && tar --exclude=target --exclude=__pycache__ -cf - Cargo.toml Cargo.lock rustfmt.toml crates notebooks \
   kernel-setup tests/run-notebooks.sh tests/check_notebooks.py README.md INSTRUCTORS.md 2>/dev/null) \
  | (cd "$new_src" && tar -xf -)
# Only replace the copy when something changed: its files' times are what cargo compares.
if [ -d "$prefix/src" ] && diff -r -q "$prefix/src" "$new_src" >/dev/null 2>&1; then
  rm -rf "$new_src"; say "unchanged"
else
  rm -rf "$prefix/src.old"; [ -d "$prefix/src" ] && mv "$prefix/src" "$prefix/src.old"
  mv "$new_src" "$prefix/src"; rm -rf "$prefix/src.old"
  say "copied ($(du -sh "$prefix/src" | cut -f1))"
fi

# ------------------------------------------------------------------------------------------------
begin "the notebooks' crates, vendored into $prefix/vendor (cargo vendor)" \
  "cargo vendor needs the crates once: network"
# Also the crates of the toolchain's own library workspace (rust-src): evcxr's type inference
# (rust-analyzer) loads it with `cargo metadata`, which must resolve from PREFIX/vendor too, or
# cells like `let x = …;` fail with "Couldn't automatically determine type of variable".
library=$prefix/rust/lib/rustlib/src/rust/library/Cargo.toml
sync=(); [ -f "$library" ] && sync=(--sync "$library")
lock_sum=$( { cat "$prefix/src/Cargo.lock"; if [ -f "$library" ]; then cat "${library%.toml}.lock"; fi; } | sha256sum | cut -c1-16)
if [ -f "$prefix/vendor/.moe-lens-lock" ] && [ "$(cat "$prefix/vendor/.moe-lens-lock")" = "$lock_sum" ]; then
  say "already vendored for this Cargo.lock"
elif [ -n "$from" ]; then
  rm -rf "$prefix/vendor"
  if [ "$bundle" = "$prefix/.bundle/moe-lens-bundle" ]; then mv "$bundle/vendor" "$prefix/vendor"
  else cp -R "$bundle/vendor" "$prefix/vendor"; fi
  echo "$lock_sum" > "$prefix/vendor/.moe-lens-lock"
  say "the bundle's $(ls "$prefix/vendor" | wc -l) crates ($(du -sh "$prefix/vendor" | cut -f1))"
else
  rm -rf "$prefix/vendor.new"
  # RUSTC_BOOTSTRAP: the library's manifest uses nightly cargo features; nothing is compiled here.
  # First from the crates cargo already has (offline), else downloading them.
  (cd "$prefix/src" && RUSTC_BOOTSTRAP=1 cargo --offline vendor --locked --quiet "${sync[@]}" "$prefix/vendor.new" >/dev/null 2>&1) \
    || { rm -rf "$prefix/vendor.new"; (cd "$prefix/src" && RUSTC_BOOTSTRAP=1 cargo vendor --locked --quiet "${sync[@]}" "$prefix/vendor.new" >/dev/null); }
  echo "$lock_sum" > "$prefix/vendor.new/.moe-lens-lock"
  rm -rf "$prefix/vendor"; mv "$prefix/vendor.new" "$prefix/vendor"
  say "vendored $(ls "$prefix/vendor" | wc -l) crates ($(du -sh "$prefix/vendor" | cut -f1))"
fi

# ------------------------------------------------------------------------------------------------
begin "GPU or CPU (MOE_LENS_CUDA=${MOE_LENS_CUDA:-auto})" \
  "CUDA needs nvcc (module load cuda / CUDA_HOME) and CUDA_COMPUTE_CAP; or MOE_LENS_CUDA=0"
cuda=0; cuda_cap=""; nvcc_bin=""; gpu_name=""
for cand in "$(command -v nvcc 2>/dev/null || true)" "${CUDA_HOME:+$CUDA_HOME/bin/nvcc}" /usr/local/cuda/bin/nvcc; do
  if [ -n "$cand" ] && [ -x "$cand" ]; then nvcc_bin=$cand; break; fi
done
if command -v nvidia-smi >/dev/null 2>&1; then
  gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
  cuda_cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .' || true)
fi
cuda_cap=${CUDA_COMPUTE_CAP:-$cuda_cap}
case ${MOE_LENS_CUDA:-auto} in
  0|no|off|cpu) ;;
  1|yes|on|cuda) [ -n "$nvcc_bin" ] && [ -n "$cuda_cap" ] || { say "MOE_LENS_CUDA=1 but no nvcc or compute capability"; false; }; cuda=1 ;;
  *) if [ -n "$gpu_name" ] && [ -n "$nvcc_bin" ] && [ -n "$cuda_cap" ]; then cuda=1
     elif [ -n "$gpu_name" ]; then say "WARNING: a GPU ($gpu_name) but no nvcc: CPU build only ('module load cuda' and run again)"; fi ;;
esac
modes=(cpu); [ "$cuda" = 1 ] && modes+=(cuda)
# what the CUDA crates' build scripts read (cudarc, cudaforge), and where libcudart is found
cuda_env_vars="CUDA_HOME CUDA_PATH CUDA_ROOT CUDA_TOOLKIT_ROOT_DIR CUDNN_LIB CUDARC_CUDA_VERSION NVCC NVCC_CCBIN LIBRARY_PATH LD_LIBRARY_PATH"
say "builds: ${modes[*]}${gpu_name:+ (GPU: $gpu_name, compute capability $cuda_cap)}"

# ------------------------------------------------------------------------------------------------
begin "the shared kernel and its spec ($prefix/kernel)" "check that $prefix is writable"
mkdir -p "$prefix/kernel/spec"
install -m 755 "$here/shared-kernel.sh" "$prefix/kernel/evcxr-kernel"
install -m 755 "$here/student-setup.sh" "$prefix/bin/moe-lens-student-setup"
cat > "$prefix/kernel/spec/kernel.json" <<JSON
{
  "argv": ["$prefix/kernel/evcxr-kernel", "--control_file", "{connection_file}"],
  "display_name": "Rust (moe-lens)",
  "interrupt_mode": "message",
  "language": "rust",
  "metadata": {"moe-lens": {"evcxr_jupyter": "$evcxr_version", "shared": "$prefix"}}
}
JSON
# evcxr's logos, from the plain 'rust' spec that evcxr_jupyter --install writes (in a scratch HOME)
tmp_home=$(mktemp -d)
if HOME=$tmp_home "$prefix/bin/evcxr_jupyter" --install >/dev/null 2>&1; then
  for f in "$tmp_home"/.local/share/jupyter/kernels/rust/logo-*; do
    [ -f "$f" ] && cp "$f" "$prefix/kernel/spec/"
  done
fi
rm -rf "$tmp_home"
cat > "$prefix/moe-lens-shared.env.new" <<ENV
# written by kernel-setup/install.sh --shared on $(date -u +%Y-%m-%dT%H:%M:%SZ); read by the scripts
MOE_LENS_SHARED_VERSION=1
MOE_LENS_SHARED_EVCXR=$evcxr_version
MOE_LENS_SHARED_CUDA=$cuda
MOE_LENS_SHARED_CUDA_CAP=$cuda_cap
MOE_LENS_SHARED_NVCC_DIR=$( [ -n "$nvcc_bin" ] && dirname "$nvcc_bin" )
ENV
if [ "$cuda" = 1 ]; then
  # The CUDA settings of this install, which the kernel sets alike for the warm build and for every
  # student (shared-kernel.sh): the CUDA crates' build scripts run again when one of the first eight
  # differs (`module load cuda` sets CUDA_HOME for you, not for a student), and then everything above
  # them is compiled again at a student's first `:dep` cell; the two library paths find libcudart.
  { echo "MOE_LENS_SHARED_CUDA_ENV=1"
    for v in $cuda_env_vars; do printf 'MOE_LENS_SHARED_CUDA_ENV_%s=%q\n' "$v" "${!v:-}"; done
  } >> "$prefix/moe-lens-shared.env.new"
fi
# the C compilers' settings and the other variables build scripts watch, kept alike the same way
# (build-env.sh says why)
moe_lens_build_env_record >> "$prefix/moe-lens-shared.env.new"
mv "$prefix/moe-lens-shared.env.new" "$prefix/moe-lens-shared.env"
say "kernel: $prefix/kernel/evcxr-kernel"

# ------------------------------------------------------------------------------------------------
begin "build folders no other user can plant a cargo config above (kernel-setup/build-dir.sh)" \
  "move PREFIX to a folder only you (or root) can write, or have root run: install -d -m 755 DIR/.cargo"
# shellcheck disable=SC1091
. "$here/build-dir.sh"
moe_lens_guard_tmp | sed 's/^/    /'
why=$(moe_lens_cargo_unsafe "$prefix/warm")
if [ -n "$why" ]; then hint="the warm build would run cargo below it as you: $why"; false; fi
say "the warm build's folder ($prefix/warm): no other user can put a cargo config above it"
for b in /var/tmp /tmp; do
  why=$(moe_lens_cargo_unsafe "$b/moe-lens-student")
  if [ -z "$why" ]; then say "students' build folders in $b: safe"
  else say "WARNING: students' kernels will not build in $b ($why); they fall back to ~/.cache/moe-lens-build, which is slower where homes are on NFS"; fi
done

# ------------------------------------------------------------------------------------------------
[ "${MOE_LENS_SKIP_PREWARM:-0}" = 1 ] && { say "warm build skipped (MOE_LENS_SKIP_PREWARM=1): each student's first :dep cell compiles everything"; modes=(); }
for mode in "${modes[@]}"; do
  begin "warm build of the notebooks' moe-lens ($mode) in $prefix/warm/$mode" \
    "run again; a compile error: 'cargo build -p moe-lens' in $repo shows it. A timeout: MOE_LENS_WARMUP_TIMEOUT=7200"
  warm=$prefix/warm/$mode
  dep=$("$venv/bin/python" "$here/execute.py" --dep-line "$prefix/src/notebooks")
  key=$( { echo "$dep"; echo "$evcxr_version $mode $cuda_cap"; "$prefix/rust/bin/rustc" -vV; cat "$prefix/vendor/.moe-lens-lock";
           grep -E '^MOE_LENS_SHARED_(CUDA|BUILD)_ENV' "$prefix/moe-lens-shared.env" || true;
           (cd "$prefix/src" && find crates/moe-lens -type f ! -path '*/data/*' | sort | xargs sha256sum); } | sha256sum | cut -c1-16)
  if [ -f "$warm/stamp" ] && [ "$(cat "$warm/stamp")" = "$key" ] && [ -d "$warm/target" ] && [ "${MOE_LENS_REWARM:-0}" != 1 ]; then
    say "already done for these sources ($key)"
    continue
  fi
  rm -f "$warm/stamp"
  mkdir -p "$warm"
  jp=$(mktemp -d)
  mkdir -p "$jp/kernels/moe-lens-shared-warm"
  sed 's/"display_name": "Rust (moe-lens)"/"display_name": "moe-lens warm-up"/' "$prefix/kernel/spec/kernel.json" \
    > "$jp/kernels/moe-lens-shared-warm/kernel.json"
  say "compiling candle, tokenizers, plotters and moe-lens as a notebook cell does (4-15 min on 2 cores)"
  t0=$(date +%s)
  # The kernel's own state (its CARGO_HOME with the vendor config) goes to a folder of the install.
  # evcxr's cell library finds libstd through a relative runpath that is one folder too deep (see
  # install.sh): it resolves only when the build folder and the toolchain share no top folder, as
  # students' build folders never do (shared-kernel.sh), but PREFIX/warm and PREFIX/rust always do.
  # So the warm-up's one cell finds libstd through LD_LIBRARY_PATH, which cargo does not compare.
  # (Seen with no rustup on the instructor's PATH, e.g. the bundle's Rust: evcxr then compiles with
  # PREFIX/rust; with rustup it takes rustup's toolchain, elsewhere, of the same version.)
  std_dir=$("$prefix/rust/bin/rustc" --print target-libdir)
  LD_LIBRARY_PATH=$std_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} \
  JUPYTER_PATH=$jp EVCXR_TMPDIR=$warm MOE_LENS_KERNEL_MODE=$mode MOE_LENS_HOME=$prefix/warm/.state-$mode \
    "$venv/bin/python" "$here/execute.py" --warm-up "$prefix/src/notebooks" --kernel moe-lens-shared-warm
  rm -rf "$jp" "$prefix/warm/.state-$mode"
  echo "$key" > "$warm/stamp"
  say "done in $(( $(date +%s) - t0 )) s; $(du -sh "$warm/target" | cut -f1)"
done

# ------------------------------------------------------------------------------------------------
begin "readable by everyone, writable by you only" "check the ownership of $prefix"
if [ -n "$from" ] && [ -d "$prefix/.bundle" ]; then rm -rf "$prefix/.bundle"; fi
chmod -R a+rX,go-w "$prefix"
say "$(du -sh "$prefix" | cut -f1) in $prefix"

if [ "$system_spec" = 1 ]; then
  begin "system-wide kernel spec '$kernel_name' (for JupyterHub's single-user servers)" \
    "needs write access to the Jupyter data folder (root, or --kernelspec-system JUPYTER_PREFIX you own)"
  if [ -n "$system_prefix" ]; then
    "$venv/bin/jupyter" kernelspec install --prefix "$system_prefix" --name "$kernel_name" "$prefix/kernel/spec" >/dev/null
    say "installed into $system_prefix/share/jupyter/kernels/$kernel_name"
  else
    "$venv/bin/jupyter" kernelspec install --name "$kernel_name" "$prefix/kernel/spec" >/dev/null
    say "installed: $("$venv/bin/jupyter" kernelspec list | grep " $kernel_name ")"
  fi
fi

trap - ERR
cat <<EOF

moe-lens shared install finished in $(( $(date +%s) - t_start )) s: $prefix

Each student, once (about ten seconds; nothing is compiled):
    $prefix/src/kernel-setup/install.sh
then starts their lab with
    ~/moe-lens-lab/kernel-setup/start-lab.sh --socket
(A student's own clone works too: MOE_LENS_SHARED=$prefix kernel-setup/install.sh.)
Before the class: INSTRUCTORS.md (the model cache: moe-lens prepare; GPU slices; the checklist).
EOF
