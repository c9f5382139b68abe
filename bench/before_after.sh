#!/bin/bash
# Two builds of the CLI on the same card, same model, same call: timings and peak GPU memory of
# `moe-lens bench` (bf16 and q4k: single trace, batched, load), alternating A, B, A, B so drift
# shows. Binaries: /tmp/bins/<NAME>/moe-lens (bench/a30_check.sh unpacks .devrun/bins.tar.xz).
#   NAMES  the two builds (default "90before 90")    QUANTS  default "q4k none"
set -u
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
OUT=${OUT:-/tmp/out}; W=${WORK:-/tmp/ml}; M=$W/olmoe-rand
NAMES=${NAMES:-"90before 90"}; QUANTS=${QUANTS:-"q4k none"}
LOG=$OUT/before_after.log
for round in 1 2; do
  for q in $QUANTS; do
    for n in $NAMES; do
      nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > $OUT/smi_ba_${n}_${q}_$round.txt 2>/dev/null & SP=$!
      /tmp/bins/$n/moe-lens bench --model $M --sents $W/sents.json --device cuda --quant $q --no-loop --routing-n 1 \
        --out $OUT/ba_${n}_${q}_$round.json >> $LOG 2>&1
      echo "before_after $n $q round $round rc=$?" >> $LOG; kill $SP
    done
  done
done
python3 - "$OUT" <<'PY'
import json, os, sys, glob
out = sys.argv[1]
rows = {}
for f in sorted(glob.glob(os.path.join(out, "ba_*.json"))):
    n, q, r = os.path.basename(f)[3:-5].rsplit("_", 2)
    d = json.load(open(f))
    smi = [int(x) for x in open(os.path.join(out, f"smi_ba_{n}_{q}_{r}.txt")).read().split() if x.isdigit()]
    rows.setdefault((q, n), []).append((d["single_trace_ms_median"], d["batched_s"], d["load_first"]["s"], max(smi) if smi else None))
print(f"{'quant':6s} {'build':10s} trace ms (r1, r2)   batched s        load s          peak MiB")
for (q, n), v in sorted(rows.items()):
    print(f"{q:6s} {n:10s} " + "   ".join(" ".join(f"{x[i]:.3f}" if isinstance(x[i], float) else str(x[i]) for x in v) for i in range(4)))
PY
