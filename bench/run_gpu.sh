#!/bin/bash
# One device call: the Python lab's pipeline and ours on the same random full-size OLMoE, same card.
# Needs the stripped CUDA binary at .devrun/moe-lens (see BENCHMARKS.md). Results under $OUT.
set -u
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; W=${WORK:-/tmp/ml}; M=$W/olmoe-rand; BIN=${BIN:-.devrun/moe-lens}
QUANTS=${QUANTS:-"none q8_0 q4k"}
mkdir -p $W $OUT
LOG=$OUT/run.log
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; nproc; } >> $LOG 2>&1
[ -d $M ] || python3 bench/gpu_prep.py $M $W >> $LOG 2>&1
cp $W/prep.json $OUT/prep.json 2>/dev/null
ours() {
  q=$1
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > $W/smi_$q.txt 2>/dev/null & SP=$!
  $BIN bench --model $M --sents $W/sents.json --quant $q --device cuda --out $OUT/ours_$q.json \
     --routing-out $W/route_$q.json --fresh --sweep ${BENCH_ARGS:-} >> $LOG 2>&1
  echo "ours $q rc=$?" >> $LOG
  kill $SP
}
for q in $QUANTS; do
  ours $q
  [ $q = none ] && python3 bench/compare.py $W $OUT >> $LOG 2>&1
  if [ $q = none ] && [ -z "${NO_SEED:-}" ]; then
    SEED_MODEL_DIR=$M OUT=$OUT python3 bench/seed_baseline.py >> $LOG 2>&1; echo "seed rc=$?" >> $LOG
  fi
done
python3 bench/compare.py $W $OUT >> $LOG 2>&1
grep -E "rc=|single|loop over|batched:|generate|load \(|COMPARE|bf16 \{|error|Error" $LOG | tail -60
