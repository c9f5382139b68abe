#!/bin/bash
# The CPU comparison, on the device machine restricted to 2 of its cores (taskset), or on a real
# 2-core machine (set PATH to a Python with torch and transformers, WORK, BIN; prep there with
# DEVICE=cpu): moe-lens's quantized path (q4k, q8_0) against transformers bf16 with the lab's hooks, on
# the random full-size OLMoE of bench/gpu_prep.py and the same sentences. The quantized cache is
# written first with all cores (quantizing 6.4B weights on 2 cores would take most of a call).
#   BIN  our binary (a CUDA build runs on the CPU with --device cpu);  B  these scripts
#   N    sentences for the one-by-one loop (default 20);  STEPS  default "prep quant ours torch"
set -u
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; W=${WORK:-/tmp/ml}; M=$W/olmoe-rand; BIN=${BIN:-.devrun/moe-lens}; B=${B:-bench}; N=${N:-20}
STEPS=${STEPS:-"prep quant ours torch"}
mkdir -p $W $OUT; LOG=$OUT/run_cpu.log
{ date -u; lscpu | grep -E "Model name|^CPU\(s\)|Flags"; free -g | head -2; } >> $LOG 2>&1
T0=$(date +%s); stamp() { echo "== $1 at $(( $(date +%s) - T0 )) s" >> $LOG; }
two="taskset -c 0,1"
for s in $STEPS; do
  stamp $s
  case $s in
    prep) [ -d $M ] || python3 $B/gpu_prep.py $M $W >> $LOG 2>&1 ;;
    quant) for q in ${QUANTS:-q4k}; do
             /usr/bin/time -v $BIN bench --model $M --sents $W/sents.json --device cpu --quant $q --only-routing --routing-n 1 \
               --out $OUT/quant_$q.json >> $LOG 2>&1; echo "quant $q rc=$?" >> $LOG
           done ;;
    ours) for q in ${QUANTS:-q4k}; do
            RAYON_NUM_THREADS=2 /usr/bin/time -v timeout ${STEP_TIMEOUT:-400} $two $BIN bench --model $M --sents $W/sents.json --device cpu --quant $q \
              --limit $N --out $OUT/cpu_ours_$q.json >> $LOG 2>&1; echo "ours $q rc=$?" >> $LOG
          done ;;
    torch) /usr/bin/time -v timeout ${STEP_TIMEOUT:-400} $two python3 $B/cpu_baseline.py $M $W/sents.json $OUT/cpu_baseline.json $N 2 >> $LOG 2>&1
           echo "torch rc=$?" >> $LOG ;;
  esac
done
stamp done
grep -E "rc=|^== |single|loop over|batched:|generate|load \(|Maximum resident|Elapsed|cpu_baseline|rror" $LOG | tail -50
