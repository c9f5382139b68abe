#!/bin/bash
# Where the time of one forward goes (#17): the single-sentence trace of the full-size random OLMoE
# (bf16, q4k), timed, and every kernel's duration under Nsight Compute (the device has ncu, not nsys).
# The GPU tests and the full bench are bench/perf_final.sh's.
#   BUILD   which bundle (.devrun/$BUILD/bundle.tar.xz), default 90
#   STEPS   default "tools prep single ncu"
#   QUANTS  default "none q4k"
# Results under $OUT: probe.log, single_<build>_<quant>.json, ncu_<build>_<quant>.txt.
set -u
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
OUT=${OUT:-/tmp/out}; W=${WORK:-/tmp/ml}; M=$W/olmoe-rand
BUILD=${BUILD:-90}; STEPS=${STEPS:-"tools prep single ncu"}; QUANTS=${QUANTS:-"none q4k"}
mkdir -p $W $OUT
LOG=$OUT/probe.log
D=/tmp/b$BUILD; [ -x $D/bin/moe-lens ] || { mkdir -p $D; xz -dc .devrun/$BUILD/bundle.tar.xz | tar -C $D -xf -; }
BIN=$D/bin/moe-lens
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv; echo "build $BUILD"; } >> $LOG 2>&1
for s in $STEPS; do
  echo "== $s at $(date -u +%T)" >> $LOG
  case $s in
    tools) { ls /usr/local/cuda-13.0/bin 2>&1 | tr '\n' ' '; echo; ls /opt/nvidia 2>&1; which ncu nsys; } >> $LOG 2>&1 ;;
    prep) [ -d $M ] || python3 bench/gpu_prep.py $M $W >> $LOG 2>&1 ;;
    single) for q in $QUANTS; do
        $BIN bench --model $M --sents $W/sents.json --device cuda --quant $q --single-only 40 \
          --out $OUT/single_${BUILD}_$q.json >> $LOG 2>&1; echo "single $q rc=$?" >> $LOG
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
