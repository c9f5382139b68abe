#!/bin/bash
# Where the time of one forward goes (#17): the single-sentence trace of the full-size random OLMoE
# (bf16, q4k), timed, and under Nsight Systems when the device has it (kernel and API summaries).
#   BUILD   which bundle (.devrun/$BUILD/bundle.tar.xz), default 90
#   STEPS   default "tools prep single nsys"
#   QUANTS  default "none q4k"
# Results under $OUT: probe.log, single_<quant>.json, nsys_<quant>_*.csv.
set -u
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
OUT=${OUT:-/tmp/out}; W=${WORK:-/tmp/ml}; M=$W/olmoe-rand
BUILD=${BUILD:-90}; STEPS=${STEPS:-"tools prep single nsys"}; QUANTS=${QUANTS:-"none q4k"}
mkdir -p $W $OUT
LOG=$OUT/probe.log
D=/tmp/b$BUILD; [ -x $D/bin/moe-lens ] || { mkdir -p $D; xz -dc .devrun/$BUILD/bundle.tar.xz | tar -C $D -xf -; }
BIN=$D/bin/moe-lens
NSYS=$(command -v nsys || ls /usr/local/cuda*/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv; echo "build $BUILD nsys=$NSYS"; } >> $LOG 2>&1
for s in $STEPS; do
  echo "== $s at $(date -u +%T)" >> $LOG
  case $s in
    tests) [ -e /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }
      for f in tests/fixtures/olmoe-narrow tests/fixtures/olmoe-gqa; do  # the tokenizer is not tracked
        [ -f $f/tokenizer.json ] || xz -dc .devrun/tok/tokenizer.json.xz > $f/tokenizer.json; done
      for t in $D/bin/test-*; do echo "--- $t" >> $LOG; $t --test-threads 1 > $W/t.log 2>&1; echo "rc=$?" >> $LOG
        grep -E "^test result|FAILED|panicked|failed" $W/t.log | head -20 >> $LOG; done ;;
    tools) { ls /usr/local/cuda-13.0/bin 2>&1 | tr '\n' ' '; echo; ls /opt/nvidia 2>&1; which ncu nsys; } >> $LOG 2>&1 ;;
    prep) [ -d $M ] || python3 bench/gpu_prep.py $M $W >> $LOG 2>&1 ;;
    single) for q in $QUANTS; do
        $BIN bench --model $M --sents $W/sents.json --device cuda --quant $q --single-only 40 \
          --out $OUT/single_${BUILD}_$q.json >> $LOG 2>&1; echo "single $q rc=$?" >> $LOG
      done ;;
    nsys) [ -n "$NSYS" ] || { echo "no nsys" >> $LOG; continue; }
      for q in $QUANTS; do
        $NSYS profile -t cuda -o $W/p_$q -f true $BIN bench --model $M --sents $W/sents.json --device cuda \
          --quant $q --single-only 20 --out $W/nsys_single_$q.json >> $LOG 2>&1
        $NSYS stats -r cuda_gpu_kern_sum,cuda_api_sum,cuda_gpu_trace -f csv -o $OUT/nsys_${BUILD}_$q $W/p_$q.nsys-rep >> $LOG 2>&1
        echo "nsys $q rc=$?" >> $LOG
      done ;;
    ncu) NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
      for q in $QUANTS; do  # every kernel's duration, replayed one by one (no host gaps): 4 forwards
        $NCU --metrics gpu__time_duration.sum --csv $BIN bench --model $M --sents $W/sents.json --device cuda \
          --quant $q --single-only 1 --out $W/ncu_single_$q.json > $W/ncu_$q.csv 2>> $LOG
        echo "ncu $q rc=$? $(wc -l < $W/ncu_$q.csv) lines" >> $LOG
        python3 bench/ncu_sum.py $W/ncu_$q.csv 4 > $OUT/ncu_${BUILD}_$q.txt 2>> $LOG
      done ;;
  esac
done
ls -la $OUT >> $LOG
