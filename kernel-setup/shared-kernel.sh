#!/usr/bin/env bash
# The Rust kernel of a shared moe-lens install (kernel-setup/install.sh --shared PREFIX copies this
# file to PREFIX/kernel/evcxr-kernel; every student's kernel spec, or the system-wide one, runs it).
# It never compiles anything itself and never writes under PREFIX: what a kernel writes goes to the
# user's own folders, made here on first use:
#   ${MOE_LENS_HOME:-~/.local/share/moe-lens}/shared-cargo   CARGO_HOME: a config.toml that points
#                                              cargo at PREFIX/vendor (no network, no registry copy)
#   ${MOE_LENS_HOME:-…}/shared-evcxr         evcxr's config folder (no :cache: the warm build is
#                                              the cache)
#   /var/tmp/moe-lens-$USER/shared-N          the kernel's build folder (EVCXR_TMPDIR, 0700), seeded
#                                              from PREFIX/warm/MODE/target, the instructor's
#                                              pre-build, so the first `:dep` cell only links; only
#                                              where no classmate can put a cargo config above it
#                                              (build-dir.sh), else /tmp/..., else ~/.cache/...
# The paths cargo compiled against (the toolchain in PREFIX/rust, the crates in PREFIX/vendor, the
# notebooks' moe-lens in PREFIX/src/crates) are the same for every user, so the copy is up to date
# for cargo and nothing is recompiled.
#
# Settings: MOE_LENS_KERNEL_THREADS, MOE_LENS_KERNEL_SLOTS (as kernel-setup/install.sh),
# MOE_LENS_BUILD_DIR (where the build folders go), MOE_LENS_KERNEL_MODE=cpu|cuda (default: cuda
# when the shared install has the CUDA build and nvidia-smi sees a GPU). In cuda mode the CUDA
# variables its build scripts read (CUDA_HOME, CUDA_ROOT, NVCC, ...) are set as they were for the
# instructor's warm build (PREFIX/moe-lens-shared.env), so that nothing is compiled again.
set -euo pipefail
user_umask=$(umask)
umask 077
self=$(readlink -f "${BASH_SOURCE[0]}")
prefix=$(cd "$(dirname "$self")/.." && pwd)
if [ ! -f "$prefix/moe-lens-shared.env" ]; then
  echo "moe-lens kernel: $prefix/moe-lens-shared.env is missing: the shared install is incomplete; ask the instructor to run kernel-setup/install.sh --shared $prefix again" >&2
  exit 1
fi
# shellcheck disable=SC1091
. "$prefix/moe-lens-shared.env"
export MOE_LENS_SHARED=$prefix
# the instructor's C compiler settings (CC, CFLAGS, ...), not this user's: build scripts run again
# when they differ, and the first `:dep` cell then compiles again what the warm build holds
# shellcheck disable=SC1091
. "$prefix/src/kernel-setup/build-env.sh"
moe_lens_build_env_apply
export PATH="$prefix/rust/bin:$prefix/bin:$PATH"
export CANDLE_BARRIER_POOL_SPIN_LIMIT="${CANDLE_BARRIER_POOL_SPIN_LIMIT:-0}"
if [ -z "${RAYON_NUM_THREADS:-}" ]; then
  n=${MOE_LENS_KERNEL_THREADS:-$(nproc 2>/dev/null || echo 4)}
  [ "$n" -gt 8 ] && n=8
  export RAYON_NUM_THREADS=$n
fi

user=$(id -un)
state=${MOE_LENS_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/moe-lens}
mkdir -p "$state"

# cargo: the shared, vendored crates; offline; the user's own CARGO_HOME for whatever cargo writes
export CARGO_HOME=$state/shared-cargo
mkdir -p "$CARGO_HOME"
want="[source.crates-io]
replace-with = \"moe-lens-vendor\"

[source.moe-lens-vendor]
directory = \"$prefix/vendor\"

[net]
offline = true"
if [ "$(cat "$CARGO_HOME/config.toml" 2>/dev/null)" != "$want" ]; then printf '%s\n' "$want" > "$CARGO_HOME/config.toml"; fi
# evcxr's cells do not load ("dlsym failed") when cargo keeps no incremental caches
# (CARGO_INCREMENTAL=0, which sccache users often set)
unset CARGO_TARGET_DIR RUSTFLAGS RUSTC_WRAPPER CARGO_INCREMENTAL

# CPU or CUDA build (the instructor's install decides which exist)
mode=${MOE_LENS_KERNEL_MODE:-}
if [ -z "$mode" ]; then
  mode=cpu
  # nvidia-smi also where the driver's packages and container images put it outside a login PATH
  # (seen on a GPU machine: /usr/local/nvidia/bin), or a GPU student would get the CPU build
  smi=$(command -v nvidia-smi 2>/dev/null || true)
  if [ -z "$smi" ]; then
    for c in /usr/local/nvidia/bin/nvidia-smi /usr/bin/nvidia-smi; do if [ -x "$c" ]; then smi=$c; break; fi; done
  fi
  if [ "${MOE_LENS_SHARED_CUDA:-0}" = 1 ] && [ -n "$smi" ] \
     && [ -n "$("$smi" -L 2>/dev/null | head -1)" ]; then mode=cuda; fi
fi
cfg=$state/shared-evcxr
mkdir -p "$cfg"
{
  echo "// written by the moe-lens shared kernel at each start"
  if [ "$mode" = cuda ]; then
    echo ":build_env RUSTFLAGS=-Cprefer-dynamic --cfg moe_lens_cuda"
    echo ":build_env CUDA_COMPUTE_CAP=${MOE_LENS_SHARED_CUDA_CAP:-80}"
  fi
} > "$cfg/init.evcxr"
export EVCXR_CONFIG_DIR=$cfg
if [ "$mode" = cuda ] && [ -n "${MOE_LENS_SHARED_NVCC_DIR:-}" ]; then
  export PATH="$MOE_LENS_SHARED_NVCC_DIR:$PATH"
  export CUDA_COMPUTE_CAP="${MOE_LENS_SHARED_CUDA_CAP:-80}"
fi
if [ "$mode" = cuda ] && [ "${MOE_LENS_SHARED_CUDA_ENV:-0}" = 1 ]; then
  # the CUDA settings the warm build was compiled with (shared-install.sh wrote them), the same for
  # every kernel: the CUDA crates' build scripts run again when one differs, and everything above
  # them is then recompiled at the first `:dep` cell; the library paths are put first
  for v in CUDA_HOME CUDA_PATH CUDA_ROOT CUDA_TOOLKIT_ROOT_DIR CUDNN_LIB CUDARC_CUDA_VERSION NVCC NVCC_CCBIN; do
    recorded=MOE_LENS_SHARED_CUDA_ENV_$v
    if [ -n "${!recorded:-}" ]; then export "$v=${!recorded}"; else unset "$v"; fi
  done
  for v in LIBRARY_PATH LD_LIBRARY_PATH; do
    recorded=MOE_LENS_SHARED_CUDA_ENV_$v
    if [ -n "${!recorded:-}" ]; then export "$v=${!recorded}${!v:+:${!v}}"; fi
  done
fi

# the build folder: a slot of our own (one kernel per slot at a time), seeded from the warm build,
# and only where no other user can put a cargo config above it (kernel-setup/build-dir.sh says why)
# shellcheck disable=SC1091
. "$prefix/src/kernel-setup/build-dir.sh"
if [ -n "${EVCXR_TMPDIR:-}" ]; then
  why=$(moe_lens_cargo_unsafe "$EVCXR_TMPDIR")
  if [ -n "$why" ]; then echo "moe-lens kernel: WARNING: your EVCXR_TMPDIR=$EVCXR_TMPDIR: $why" >&2; fi
else
  top_of() { echo "$1" | cut -d/ -f2; }
  # MOE_LENS_BUILD_DIR, else /var/tmp, /tmp or ~/.cache, none under the toolchain's top folder
  # (evcxr's relative rpath to libstd; see install.sh)
  candidates=()
  if [ -n "${MOE_LENS_BUILD_DIR:-}" ]; then candidates+=("$MOE_LENS_BUILD_DIR"); fi
  for base in /var/tmp /tmp "$HOME"; do
    if [ -d "$base" ] && [ -w "$base" ] && [ "$(top_of "$base")" != "$(top_of "$prefix")" ]; then
      if [ "$base" = "$HOME" ]; then candidates+=("$HOME/.cache/moe-lens-build"); else candidates+=("$base/moe-lens-$user"); fi
    fi
  done
  root=$(moe_lens_build_root "moe-lens kernel" "${candidates[@]}")
  if [ -n "$root" ] && command -v flock >/dev/null 2>&1; then
    for n in $(seq 0 $(( ${MOE_LENS_KERNEL_SLOTS:-4} - 1 ))); do
      d=$root/shared-$mode-$n
      mkdir -p "$d"
      exec 9>"$d.lock"
      if flock -n 9; then export EVCXR_TMPDIR=$d; break; fi
      exec 9>&-
    done
  fi
  warm=$prefix/warm/$mode
  if [ -n "${EVCXR_TMPDIR:-}" ] && [ -f "$warm/stamp" ] \
     && [ "$(cat "$EVCXR_TMPDIR/seed.stamp" 2>/dev/null)" != "$(cat "$warm/stamp")" ]; then
    # first use of this slot, or the instructor rebuilt: copy the warm build (about 600 MB, seconds)
    rm -rf "$EVCXR_TMPDIR/target" "$EVCXR_TMPDIR/seed.stamp"
    cp -R --preserve=timestamps "$warm/target" "$EVCXR_TMPDIR/target"
    [ -f "$warm/Cargo.lock" ] && cp --preserve=timestamps "$warm/Cargo.lock" "$EVCXR_TMPDIR/Cargo.lock"
    cp "$warm/stamp" "$EVCXR_TMPDIR/seed.stamp"
  fi
  if [ -z "${EVCXR_TMPDIR:-}" ]; then
    # no slot: evcxr builds in a new folder under TMPDIR (/tmp by default): a private one instead,
    # where evcxr's cell library finds libstd through LD_LIBRARY_PATH (see shared-install.sh)
    export TMPDIR=$state/tmp
    mkdir -p "$TMPDIR" && chmod 700 "$TMPDIR"
    std_dir=$("$prefix/rust/bin/rustc" --print target-libdir)
    export LD_LIBRARY_PATH=$std_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    echo "moe-lens kernel: no build folder to keep; this kernel builds in a new one under $TMPDIR (the first :dep cell compiles moe-lens again)" >&2
  fi
  if [ "${MOE_LENS_SEED_ONLY:-0}" = 1 ]; then
    # kernel-setup/student-setup.sh: only prepare a build folder, start no kernel
    echo "${EVCXR_TMPDIR:-}" > "$state/.seeded"
    exit 0
  fi
fi
umask "$user_umask"
exec "$prefix/bin/evcxr_jupyter" "$@"
