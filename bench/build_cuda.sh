#!/usr/bin/env bash
# Builds the CUDA test binaries and the CLI for one compute capability on this (GPU-less) machine,
# with ../shared/notes/cuda.md's recipe, into target/cuda$CAP, and packs the stripped binaries the
# GPU checks need into .devrun/$CAP/bundle.tar.xz (under the device's 64 MiB transfer limit).
#   bench/build_cuda.sh 80|90 [test names...]   (default tests: cuda_interventions cuda_fused)
set -euo pipefail
cd "$(dirname "$0")/.."
cap=${1:?compute capability, e.g. 80 or 90}; shift
tests=${*:-cuda_interventions cuda_fused}
CU13=$PWD/.cuda/lib/python3.11/site-packages/nvidia/cu13
export PATH=$CU13/bin:$PATH CUDA_ROOT=$PWD/.cudalink CUDA_COMPUTE_CAP=$cap LIBRARY_PATH=$PWD/.cudalink/lib
export CARGO_TARGET_DIR=$PWD/target/cuda$cap
cargo build --release --features cuda -p moe-lens-cli
args=(); for t in $tests; do args+=(--test "$t"); done
cargo test --release --features cuda -p moe-lens --lib "${args[@]}" --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import sys,json
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["kind"]!=["bin"]:
        print(m["target"]["name"], m["executable"])' > "$CARGO_TARGET_DIR/test-bins.txt"
out=.devrun/$cap; rm -rf "$out"; mkdir -p "$out/bin"
cp "$CARGO_TARGET_DIR/release/moe-lens" "$out/bin/moe-lens"
while read -r name exe; do cp "$exe" "$out/bin/test-$name"; done < "$CARGO_TARGET_DIR/test-bins.txt"
strip "$out"/bin/*
tar -C "$out" -cf - bin | xz --lzma2=preset=9,dict=384MiB -T1 > "$out/bundle.tar.xz"
rm -rf "$out/bin"
ls -la "$out"; cat "$CARGO_TARGET_DIR/test-bins.txt"
