#!/bin/bash
# #17 in one device call: the GPU tests of one build, then on the full-size random OLMoE (bench/
# gpu_prep.py) our bench (bf16 and q4k: single-sentence trace, batched 1,000 sentences with
# counting, generation, loads), the scan a user types (`moe-lens scan --corpus builtin`, defaults)
# and the tuned PyTorch lab (bench/tuned_lab.py), each with nvidia-smi sampling GPU memory every
# 100 ms (the same measure on both sides).
#   BUILD  bundle .devrun/$BUILD/bundle.tar.xz (default 80, the A30's build)
#   STEPS  default "prep tests ours scan tuned"
# Results under $OUT: final.log, ours_<q>.json, scan_<q>.log, tuned_lab.json, smi_*.txt.
set -u
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; W=${WORK:-/tmp/ml}; M=$W/olmoe-rand
BUILD=${BUILD:-80}; STEPS=${STEPS:-"prep tests ours scan tuned"}
mkdir -p $W $OUT
LOG=$OUT/final.log
D=/tmp/b$BUILD; [ -x $D/bin/moe-lens ] || { mkdir -p $D; xz -dc .devrun/$BUILD/bundle.tar.xz | tar -C $D -xf -; }
BIN=$D/bin/moe-lens
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv; echo "build $BUILD"; } >> $LOG 2>&1
smi() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > $OUT/smi_$1.txt 2>/dev/null & SP=$!; }
peak() { kill $SP; echo "$1: nvidia-smi peak $(sort -n $OUT/smi_$1.txt | tail -1) MiB" >> $LOG; }
for s in $STEPS; do
  echo "== $s at $(date -u +%T)" >> $LOG
  case $s in
    prep) [ -d $M ] || python3 bench/gpu_prep.py $M $W >> $LOG 2>&1
      [ -f $M/tokenizer.json ] || xz -dc .devrun/tok/tokenizer.json.xz > $M/tokenizer.json ;;
    tests) [ -e /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }
      for f in tests/fixtures/olmoe-narrow tests/fixtures/olmoe-gqa; do
        [ -f $f/tokenizer.json ] || xz -dc .devrun/tok/tokenizer.json.xz > $f/tokenizer.json; done
      for t in $D/bin/test-*; do echo "--- $t" >> $LOG; $t --test-threads 1 > $W/t.log 2>&1; echo "rc=$?" >> $LOG
        grep -E "^test result|FAILED|panicked|worst" $W/t.log | head -30 >> $LOG; done ;;
    ours) for q in none q4k; do
        fresh=""; [ $q = q4k ] && fresh=--fresh
        smi ours_$q
        $BIN bench --model $M --sents $W/sents.json --device cuda --quant $q --no-loop --routing-n 20 $fresh \
          --out $OUT/ours_$q.json >> $LOG 2>&1; echo "ours $q rc=$?" >> $LOG
        peak ours_$q
      done ;;
    scan) for q in none q4k; do
        smi scan_$q
        /usr/bin/time -f "wall %e s, max RSS %M kB" $BIN scan --model $M --corpus builtin --device cuda --quant $q \
          --out $W/scan_$q --timings > $OUT/scan_$q.log 2>&1; echo "scan $q rc=$?" >> $LOG
        peak scan_$q
        grep "tokens/s" $OUT/scan_$q.log | tail -1 >> $LOG; grep "^wall" $OUT/scan_$q.log >> $LOG
      done ;;
    tuned) smi tuned
      MODEL=$M SENTS=$W/sents.json OUT=$OUT python3 bench/tuned_lab.py >> $LOG 2>&1; echo "tuned rc=$?" >> $LOG
      peak tuned ;;
  esac
done
