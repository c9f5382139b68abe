#!/usr/bin/env bash
# Issue #18's GPU check: the built-in en/ko/ja corpus scanned on the full-size random OLMoE twice on
# the GPU, experts in bf16 and in q4k, then compared token by token (`moe-lens compare-scans`: top-8
# agreement, overlap, top-1, the counts' divergence, and whether the language study's verdict
# changes per layer). On a lent GPU machine (no Rust), with a CUDA build of the CLI:
#
#   bench/gpu_compare.sh CLI.xz TOKENIZER.json      results in $OUT (default /tmp/gpu-compare-out)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-/tmp/gpu-compare-out}
mkdir -p "$out"
cli=/tmp/moe-lens-cuda
xz -dc "${1:?the CUDA CLI, xz-compressed}" > "$cli" && chmod 755 "$cli"
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
GPU_CLASS_TOKENIZER=${2:?OLMoE tokenizer.json} bash "$here/bench/gpu_class.sh" model
scans=/tmp/gpu-compare-scans
rm -rf "$scans"; mkdir -p "$scans"
for q in none q4k; do
  t0=$(date +%s)
  "$cli" scan --model /opt/olmoe-random --device cuda --quant "$q" --corpus builtin --out "$scans/$q" --timings \
    > "$out/scan-$q.txt" 2>&1 || { tail -20 "$out/scan-$q.txt"; exit 1; }
  echo "gpu-compare: scan with experts $q: $(( $(date +%s) - t0 )) s (load and quantizing included)" | tee -a "$out/summary.txt"
done
"$cli" compare-scans "$scans/none" "$scans/q4k" --csv "$out/compare.csv" 2>&1 | tee "$out/compare.txt"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$out/summary.txt"
