#!/usr/bin/env bash
# Offline servers (issue #14): kernel-setup/bundle.sh, then kernel-setup/install.sh --from with no
# network, as CI runs it (after tests/shared-install.sh; CI has network, the installs here do not):
#
#  1. bundle.sh OUT.tar, from what this machine has cached (cargo's crates, pip's wheels, the
#     tokenizer's wheel); timed and sized; checked: MANIFEST, every sum, files owned by root and
#     writable by nobody else, no .git, no untracked file of the checkout (a canary), no HF_TOKEN
#  2. a damaged bundle is refused before anything is installed (the unpacked folder, repaired,
#     is what step 5 installs from: --from takes a tar or its unpacked folder)
#  3. install.sh --from OUT.tar --shared PREFIX with no network: a network namespace with only the
#     loopback (`unshare -n`, where allowed), proxies to a closed port and every offline switch
#     (CARGO_NET_OFFLINE, PIP_NO_INDEX, HF_HUB_OFFLINE); checked: the lab's wheels installed from
#     the bundle, the crates, the tokenizer next to the demo model, PREFIX readable by all and
#     writable by nobody else
#  4. the demo model runs offline: the CLI built from PREFIX/src with PREFIX's toolchain and only
#     PREFIX/vendor (cargo --offline --locked), `moe-lens trace --model demo` with HF_HUB_OFFLINE=1;
#     its JSON equals the same trace from the online build of this checkout
#  5. install.sh --from <the unpacked bundle> for one user (a second HOME): the vendored crates and the lab in
#     0700 folders, the kernel wrapper pointing cargo at them, offline (the evcxr_jupyter that
#     tests/notebooks.sh built is put in that HOME first, so it is not compiled again)
#
# Not done here, to stay within CI's time (--full does them; about 45 minutes on 2 cores, measured
# 2026-12-02 with --with-rust on a loaded machine; INSTRUCTORS.md, "Offline servers"):
# compiling evcxr_jupyter from the bundle (CI copies the same version that install.sh built, as the
# shared install does), the warm builds (shared and the user's pre-build), and the notebooks run
# as a student (a second Unix user) of the offline shared install, inside the namespace
# (tests/shared-install.sh with MOE_LENS_SHARED_CI_PREFIX).
#
# --with-rust (not in CI's run; may be combined with --full): a server with no Rust at all. The
# bundle is made with bundle.sh --with-rust, and the installs of steps 3 and 5 (and --full's) run
# with a PATH without cargo or rustc and a HOME with no ~/.cargo or ~/.rustup (env -i; no
# RUSTUP_HOME/CARGO_HOME): checked, that PREFIX/rust and the user's offline/rust are the bundle's
# toolchain and that the kernels use them. Without --full, the instructor's evcxr_jupyter of the same
# version is offered through CARGO_INSTALL_ROOT (copied, not compiled). With --full, after the user's
# pre-build (both variants) the first `:dep` cell of that user's next kernel is timed and must
# compile nothing (the build folder's .rlib files, moe-lens's included, unchanged).
#
#   tests/offline-install.sh [--full] [--with-rust]
# Settings: MOE_LENS_OFFLINE_CI_DIR (default /tmp/moe-lens-offline-ci; the CLI's build folder in
# it is kept between runs, the rest is made afresh).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
full=0; with_rust=0
for arg in "$@"; do
  case $arg in
    --full) full=1 ;;
    --with-rust) with_rust=1 ;;
    *) echo "tests/offline-install.sh [--full] [--with-rust]: unknown argument $arg" >&2; exit 2 ;;
  esac
done
work=${MOE_LENS_OFFLINE_CI_DIR:-/tmp/moe-lens-offline-ci}
fail() { echo "offline-install: FAILED: $*" >&2; exit 1; }
say() { echo "offline-install: $*"; }
mkdir -p "$work"
find "$work" -mindepth 1 -maxdepth 1 ! -name cli-target -exec rm -rf {} +
# the user's build folders (step 5): not under /tmp with --with-rust, where the user's Rust is (the
# kernel's build folder must not share its top folder with the toolchain: see install.sh)
user_build=$work/user-build
if [ "$with_rust" = 1 ]; then user_build=/var/tmp/moe-lens-offline-ci-user-build; rm -rf "$user_build"; fi
t_all=$(date +%s)
# the Python the shared install will use (one every user can run) and the bundle's wheels are for
py=python3
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import venv' 2>/dev/null && py=/usr/bin/python3

# --- how "no network" is made -------------------------------------------------------------------
no_net=(env http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9
        HTTPS_PROXY=http://127.0.0.1:9 ALL_PROXY=http://127.0.0.1:9 no_proxy= NO_PROXY=
        CARGO_NET_OFFLINE=true PIP_NO_INDEX=1 HF_HUB_OFFLINE=1)
netns=0
if command -v unshare >/dev/null 2>&1 && command -v ip >/dev/null 2>&1 \
   && unshare -n sh -c 'ip link set lo up' 2>/dev/null; then netns=1; fi
offline() {
  if [ "$netns" = 1 ]; then unshare -n sh -c 'ip link set lo up && exec "$@"' sh "${no_net[@]}" "$@"
  else "${no_net[@]}" "$@"; fi
}
if [ "$netns" = 1 ]; then
  offline python3 -c 'import socket; socket.create_connection(("pypi.org", 443), timeout=5)' 2>/dev/null \
    && fail "the network namespace still reaches pypi.org"
  say "no network: a network namespace with only the loopback (unshare -n), plus proxies to a closed port"
else
  say "no network: unshare -n is not allowed here, so proxies to a closed port and the offline switches only"
fi
# --with-rust: "a machine without Rust": only the system's folders on PATH, a HOME of its own
no_rust_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin   # sbin: useradd for the student
no_rust=(env -i HOME="$work/no-rust-home" USER="$(id -un)" LOGNAME="$(id -un)" LANG=C.UTF-8 PATH="$no_rust_path"
         "${no_net[@]:1}")
if [ "$with_rust" = 1 ]; then
  mkdir -p "$work/no-rust-home"
  for tool in cargo rustc rustup; do
    ! "${no_rust[@]}" sh -c "command -v $tool" >/dev/null || fail "$tool is on $no_rust_path: --with-rust would prove nothing"
  done
  say "--with-rust: the installs run with PATH=$no_rust_path (no cargo, rustc or rustup) and an empty HOME"
fi

# --- 1. the bundle ---------------------------------------------------------------------------------
canary_value="moe-lens-canary-$RANDOM$RANDOM$RANDOM"
canary=$repo/offline-canary-untracked.txt
printf '%s\n' "$canary_value" > "$canary"
trap 'rm -f "$canary"' EXIT
t0=$(date +%s)
bundle_args=(); [ "$with_rust" = 1 ] && bundle_args=(--with-rust)
PYTHON=$py bash kernel-setup/bundle.sh "$work/moe-lens-bundle.tar" "${bundle_args[@]}" 2>&1 | sed 's/^/    /'
rm -f "$canary"
bundle_s=$(( $(date +%s) - t0 ))
tarf=$work/moe-lens-bundle.tar
[ -f "$tarf" ] && [ -f "$tarf.sha256" ] || fail "bundle.sh wrote no $tarf (and .sha256)"
size=$(du -h "$tarf" | cut -f1)
say "bundle: $size in $bundle_s s"
listing=$(tar -tvf "$tarf")
echo "$listing" | awk '$2 != "0/0" { print; exit 1 }' >/dev/null || fail "files in the bundle not owned by 0/0: $(echo "$listing" | awk '$2 != "0/0"' | head -3)"
echo "$listing" | awk 'substr($1, 6, 1) == "w" || substr($1, 9, 1) == "w" { print; exit 1 }' >/dev/null \
  || fail "files in the bundle writable by group or others"
names=$(tar -tf "$tarf")
for want in MANIFEST SHA256SUMS tokenizer/tokenizer.json src/crates/moe-lens/data/demo/model.safetensors \
            src/crates/moe-lens/data/demo/tokenizer.json src/Cargo.lock "evcxr_jupyter-0.22.0/Cargo.lock"; do
  grep -qx "moe-lens-bundle/$want" <<<"$names" || fail "the bundle has no $want"
done
grep -q '^moe-lens-bundle/vendor/candle-core/' <<<"$names" || fail "the bundle has no vendored candle-core"
grep -q '^moe-lens-bundle/vendor/ra_ap_' <<<"$names" || fail "the bundle has no vendored crates of evcxr (ra_ap_*)"
grep -q '^moe-lens-bundle/wheels/jupyterlab-4.6.6-' <<<"$names" || fail "the bundle has no jupyterlab wheel"
if grep -Eq '(^|/)\.git(/|$)|(^|/)(\.netrc|\.pypirc|\.git-credentials|credentials\.toml|credentials)$' <<<"$names"; then
  fail "the bundle holds .git or a credentials file: $(grep -E '(^|/)\.git(/|$)|credentials' <<<"$names" | head -3)"
fi
grep -q 'offline-canary' <<<"$names" && fail "an untracked file of the checkout went into the bundle"
secrets=("$canary_value"); [ -n "${HF_TOKEN:-}" ] && secrets+=("$HF_TOKEN")
for s in "${secrets[@]}"; do
  [ "$(tar -xOf "$tarf" | grep -cF "$s" || true)" = 0 ] || fail "a secret (the canary or HF_TOKEN) is inside the bundle"
done
manifest=$(tar -xOf "$tarf" moe-lens-bundle/MANIFEST)
grep -q "^MOE_LENS_BUNDLE_CARGO_LOCK=$(sha256sum Cargo.lock | cut -d' ' -f1)$" <<<"$manifest" || fail "MANIFEST: not this Cargo.lock"
grep -q '^MOE_LENS_BUNDLE_TOKENIZER=9ad33b4b39a9f83973c3f8c42a01948dd5b877a28ac9a5356956c4ff4ed0b714$' <<<"$manifest" \
  || fail "MANIFEST: not OLMoE's tokenizer"
rust_release=$(rustc -vV | sed -n 's/^release: //p')
if [ "$with_rust" = 1 ]; then
  grep -qx 'MOE_LENS_BUNDLE_WITH_RUST=1' <<<"$manifest" || fail "MANIFEST: bundle.sh --with-rust did not say WITH_RUST=1"
  for want in rust/bin/rustc rust/bin/cargo rust/lib/rustlib/src/rust/library/Cargo.toml; do
    grep -qx "moe-lens-bundle/$want" <<<"$names" || fail "the --with-rust bundle has no $want"
  done
  say "the bundle holds Rust $rust_release (rustc, cargo, rust-src)"
fi
say "bundle checked: owners, modes, contents, no .git/credentials/untracked files/secrets; $(grep -c '' <<<"$names") entries"

# --- 2. a damaged bundle is refused ----------------------------------------------------------------
t0=$(date +%s)
mkdir -p "$work/unpacked"
tar -xf "$tarf" -C "$work/unpacked"
printf 'X' | dd of="$work/unpacked/moe-lens-bundle/tokenizer/tokenizer.json" bs=1 seek=1000 conv=notrunc status=none
if offline bash kernel-setup/install.sh --from "$work/unpacked" --shared "$work/damaged" > "$work/damaged.log" 2>&1; then
  fail "install.sh --from accepted a damaged bundle"
fi
grep -q "the bundle is damaged" "$work/damaged.log" || { cat "$work/damaged.log"; fail "no clear message for a damaged bundle"; }
[ ! -e "$work/damaged/lab-venv" ] || fail "something was installed from a damaged bundle"
rm -rf "$work/damaged"
tar -xf "$tarf" -C "$work/unpacked" moe-lens-bundle/tokenizer/tokenizer.json   # repaired, for step 5
say "a damaged bundle is refused ($(( $(date +%s) - t0 )) s)"

# --- 3. the shared install, offline ----------------------------------------------------------------
prefix=$work/prefix
t0=$(date +%s)
extra=(MOE_LENS_SKIP_PREWARM=1)
[ "$full" = 1 ] && extra=(MOE_LENS_EVCXR_FROM_BUNDLE=1)
instructor=(env)
if [ "$with_rust" = 1 ]; then
  instructor=("${no_rust[@]}")
  if [ "$full" = 0 ]; then
    # the instructor's evcxr_jupyter of the same version (tests/notebooks.sh built it), offered the way
    # cargo finds an installed one (CARGO_INSTALL_ROOT), so that it is copied instead of compiled
    mkdir -p "$work/instructor-evcxr/bin"
    cp "${CARGO_HOME:-$HOME/.cargo}/bin/evcxr_jupyter" "$work/instructor-evcxr/bin/"
    cp "${CARGO_HOME:-$HOME/.cargo}/.crates.toml" "${CARGO_HOME:-$HOME/.cargo}/.crates2.json" "$work/instructor-evcxr/"
    extra+=(CARGO_INSTALL_ROOT="$work/instructor-evcxr")
  fi
fi
offline "${instructor[@]}" PYTHON="$py" "${extra[@]}" bash kernel-setup/install.sh --from "$tarf" --shared "$prefix" 2>&1 \
  | tee "$work/shared.log" | sed 's/^/    /'
shared_s=$(( $(date +%s) - t0 ))
if [ "$with_rust" = 1 ]; then
  grep -q "the bundle's Rust $rust_release" "$work/shared.log" || fail "the shared install did not take the bundle's Rust"
  [ "$("$prefix/rust/bin/rustc" -vV)" = "$(rustc -vV)" ] \
    || fail "$prefix/rust/bin/rustc is not the bundle's Rust $rust_release: $("$prefix/rust/bin/rustc" -vV | head -1)"
  [ "$("$prefix/rust/bin/rustc" --print sysroot)" = "$prefix/rust" ] || fail "$prefix/rust/bin/rustc's sysroot is not $prefix/rust"
  [ -f "$prefix/rust/lib/rustlib/src/rust/library/Cargo.toml" ] || fail "no rust-src in $prefix/rust"
  [ ! -e "$work/no-rust-home/.rustup" ] || fail "something made ~/.rustup in the Rust-less HOME"
  say "--with-rust: PREFIX/rust is the bundle's toolchain: $("$prefix/rust/bin/rustc" -vV | sed -n 's/^release: /rustc /p') (sysroot $prefix/rust, with rust-src)"
fi
[ "$("$prefix/lab-venv/bin/jupyter-lab" --version)" = 4.6.6 ] || fail "JupyterLab 4.6.6 is not in $prefix/lab-venv"
[ "$(sha256sum < "$prefix/src/crates/moe-lens/data/demo/tokenizer.json" | cut -d' ' -f1)" = \
  9ad33b4b39a9f83973c3f8c42a01948dd5b877a28ac9a5356956c4ff4ed0b714 ] || fail "no tokenizer next to the shared demo model"
[ -d "$prefix/vendor/candle-core" ] || fail "no vendored crates in $prefix/vendor"
[ ! -e "$prefix/.bundle" ] || fail "the unpacked bundle was left in $prefix/.bundle"
bad=$(find "$prefix" ! -type l \( -perm /022 -o ! -perm -004 \) -print | head -3)
[ -z "$bad" ] || fail "not read-only for others under $prefix: $bad"
say "shared install from the bundle, offline: $shared_s s ($(du -sh "$prefix" | cut -f1)); PREFIX readable by all, writable by the owner only"

# --- 4. the demo model, offline -------------------------------------------------------------------
# Every crate of the workspace's and of evcxr_jupyter's Cargo.lock resolves from PREFIX/vendor alone
# (cargo metadata, offline); the demo model as installed in PREFIX (the folder `load("demo")` of
# PREFIX/src reads, with the bundle's tokenizer) traces offline with this checkout's CLI (built by
# tests/test.sh), and gives the same JSON as the demo model of this checkout. Compiling from
# PREFIX/vendor is --full's (the warm build; about 10 minutes on 2 cores).
t0=$(date +%s)
mkdir -p "$work/cargo-home"
printf '[source.crates-io]\nreplace-with = "v"\n\n[source.v]\ndirectory = "%s"\n\n[net]\noffline = true\n' \
  "$prefix/vendor" > "$work/cargo-home/config.toml"
for manifest in "$prefix/src/Cargo.toml" "$work/evcxr/Cargo.toml"; do
  if [ "$manifest" = "$work/evcxr/Cargo.toml" ]; then
    mkdir -p "$work/evcxr"; tar -xf "$tarf" -C "$work/evcxr" --strip-components=2 moe-lens-bundle/evcxr_jupyter-0.22.0
  fi
  n=$(offline env CARGO_HOME="$work/cargo-home" PATH="$prefix/rust/bin:/usr/bin:/bin" \
        cargo metadata --offline --locked --format-version 1 --manifest-path "$manifest" \
      | python3 -c 'import json, sys; print(len(json.load(sys.stdin)["packages"]))') \
    || fail "the crates of $manifest do not all resolve from $prefix/vendor offline"
  say "  $n packages of $(basename "$(dirname "$manifest")")'s Cargo.lock resolve from PREFIX/vendor, offline"
done
cargo build --locked --quiet -p moe-lens-cli   # tests/test.sh built it: seconds
cli=${CARGO_TARGET_DIR:-$repo/target}/debug/moe-lens
text="The cat sat on the mat. 고양이가 매트 위에 앉았다."
offline env MOE_LENS_NO_PROGRESS=1 "$cli" trace --model "$prefix/src/crates/moe-lens/data/demo" --text "$text" --format json \
  > "$work/trace-offline.json" || fail "the demo model of $prefix did not run offline"
"$cli" trace --model "$repo/crates/moe-lens/data/demo" --text "$text" --format json > "$work/trace-online.json"
python3 - "$work/trace-offline.json" "$work/trace-online.json" <<'PY' || fail "the offline demo trace differs from this checkout's"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
a.pop("model", None); b.pop("model", None)   # the folder's path, as given
assert a == b, "traces differ"
PY
say "demo model offline: the installed demo folder traces with HF_HUB_OFFLINE=1 and no network, as this checkout's demo ($(( $(date +%s) - t0 )) s)"

# --- 5. one user's install, offline ----------------------------------------------------------------
uhome=$work/user-home
mkdir -p "$uhome"
t0=$(date +%s)
cargo_home=${CARGO_HOME:-$HOME/.cargo}
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
# the evcxr_jupyter that tests/notebooks.sh's install.sh built, as if installed in this HOME (with
# cargo's install records), so it is not compiled again (step 3 of --full compiles it from the bundle)
mkdir -p "$uhome/.cargo/bin"
cp "$cargo_home/bin/evcxr_jupyter" "$uhome/.cargo/bin/"
cp "$cargo_home/.crates.toml" "$cargo_home/.crates2.json" "$uhome/.cargo/" 2>/dev/null || true
user_env=(env -i HOME="$uhome" USER="$(id -un)" LOGNAME="$(id -un)" LANG=C.UTF-8 RUSTUP_HOME="$rustup_home"
          PATH="$(dirname "$(command -v cargo)"):/usr/local/bin:/usr/bin:/bin"
          PYTHON="$py" MOE_LENS_BUILD_DIR="$user_build" "${no_net[@]:1}")
[ "$with_rust" = 1 ] && user_env=(env -i HOME="$uhome" USER="$(id -un)" LOGNAME="$(id -un)" LANG=C.UTF-8
                                  PATH="$no_rust_path" PYTHON="$py" MOE_LENS_BUILD_DIR="$user_build" "${no_net[@]:1}")
[ "$full" = 0 ] && user_env+=(MOE_LENS_SKIP_PREWARM=1)
offline "${user_env[@]}" bash kernel-setup/install.sh --from "$work/unpacked/moe-lens-bundle" 2>&1 | sed 's/^/    /'
user_s=$(( $(date +%s) - t0 ))
uh=$uhome/.local/share/moe-lens
[ "$(stat -c %a "$uh")" = 700 ] && [ "$(stat -c %a "$uh/offline")" = 700 ] || fail "$uh and $uh/offline must be 0700"
bad=$(find "$uh/offline" ! -type l -perm /077 -print | head -3)
[ -z "$bad" ] || fail "readable by others in the user's offline folder: $bad"
grep -q "CARGO_HOME=\"\$offline_cargo\"" "$uh/kernel/evcxr-kernel" && grep -q "^offline_cargo=\"$uh/offline/cargo\"" "$uh/kernel/evcxr-kernel" \
  || fail "the user's kernel wrapper does not point cargo at the vendored crates"
grep -q "directory = \"$uh/offline/vendor\"" "$uh/offline/cargo/config.toml" || fail "no cargo config for the vendored crates"
[ "$("$uh/lab-venv/bin/jupyter-lab" --version)" = 4.6.6 ] || fail "JupyterLab 4.6.6 is not in the user's lab-venv"
[ ! -e "$uh/offline-unpack" ] || fail "the unpacked bundle was left in $uh/offline-unpack"
if [ "$with_rust" = 1 ]; then
  [ "$("$uh/offline/rust/bin/rustc" -vV)" = "$(rustc -vV)" ] || fail "$uh/offline/rust is not the bundle's Rust $rust_release"
  grep -qx "export PATH=\"$uh/offline/rust/bin:\$PATH\"" "$uh/kernel/evcxr-kernel" \
    || fail "the user's kernel wrapper does not put the bundle's Rust ($uh/offline/rust/bin) on PATH"
  [ ! -e "$uhome/.rustup" ] && [ ! -e "$uhome/.cargo/bin/cargo" ] || fail "Rust was installed into the user's HOME"
  say "--with-rust: the user's kernel runs the bundle's Rust $rust_release from $uh/offline/rust"
fi
say "one user's install from the bundle, offline: $user_s s; 0700 folders, kernel wrapper offline"

if [ "$full" = 1 ]; then
  # --- the user's first `:dep` cell after the pre-build: warm, nothing of moe-lens compiled ----------
  # (what the pre-build is for: the next kernel takes the same build folder, slot 0, and only links)
  slot=$user_build/0
  rlibs() { find "$slot/target" -name '*.rlib' -printf '%P %T@ %s\n' | sort; }
  before=$(rlibs 2>/dev/null || true)
  grep -q 'libmoe_lens-' <<<"$before" \
    || fail "the user's pre-build left no compiled moe-lens in $slot/target"
  dep_out=$(offline "${user_env[@]}" MOE_LENS_NO_PROGRESS=1 "$uh/lab-venv/bin/python" kernel-setup/execute.py \
              --warm-up "$repo/notebooks" --kernel moe-lens-rust) || fail "the user's first :dep cell failed: $dep_out"
  dep_s=$(sed -n 's/.*`:dep` cell took \([0-9.]*\) s.*/\1/p' <<<"$dep_out")
  [ -n "$dep_s" ] || fail "no time from the first :dep cell: $dep_out"
  [ "$(rlibs)" = "$before" ] || fail "the user's first :dep cell compiled crates: $(diff <(echo "$before") <(rlibs) | head -5)"
  python3 -c "import sys; sys.exit(float('$dep_s') > float('${MOE_LENS_FIRST_DEP_MAX:-30}'))" \
    || fail "the user's first :dep cell took $dep_s s (limit ${MOE_LENS_FIRST_DEP_MAX:-30} s)"
  say "--full: the user's first :dep cell after the install: $dep_s s (kernel start included), offline, no crate compiled ($(grep -c '' <<<"$before") .rlib files unchanged, moe-lens's included)"
fi

if [ "$full" = 1 ]; then
  # --- the notebooks, offline, as a student of the offline shared install (and warm build) ---------
  t0=$(date +%s)
  if [ "$with_rust" = 1 ]; then
    # the instructor runs it again as they would there: from the bundle, with no Rust of their own
    offline "${no_rust[@]}" MOE_LENS_SHARED_CI_PREFIX="$prefix" MOE_LENS_SHARED_CI_FROM="$tarf" PYTHON="$py" \
      bash tests/shared-install.sh "$work/notebooks" 2>&1 | sed 's/^/    /'
  else
    offline env MOE_LENS_SHARED_CI_PREFIX="$prefix" PYTHON="$py" bash tests/shared-install.sh "$work/notebooks" 2>&1 | sed 's/^/    /'
  fi
  say "--full: both notebooks as a student of the offline install, offline: $(( $(date +%s) - t0 )) s"
fi
say "passed in $(( $(date +%s) - t_all )) s (bundle $size in $bundle_s s; shared install $shared_s s; one user $user_s s)"
