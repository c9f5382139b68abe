#!/bin/bash
# Interventions on the GPU (#15): the CUDA tests of one or more builds, and the importance sweep's
# timing on a full-size random OLMoE (bf16 with an f32 reference for the noise floor, and q4k).
#   BUILDS  builds to run, each from .devrun/$BUILD/bundle.tar.xz (bench/build_cuda.sh); default "80"
#   STEPS   default "tests prep sweep"
# Results under $OUT: iv_<build>.log, sweep_<build>_<quant>/ (sweep.json, sweep.csv).
set -u
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
OUT=${OUT:-/tmp/out}; W=${WORK:-/tmp/ml}; M=$W/olmoe-rand
BUILDS=${BUILDS:-80}; STEPS=${STEPS:-"tests prep sweep"}
mkdir -p $W $OUT
# the test binaries read the fixtures at the path they were built in
[ -e /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }
TEXT="The students in the lab watched how the router of every layer sent each token of the sentence to"
CONT=" eight experts."
for BUILD in $BUILDS; do
  D=/tmp/b$BUILD; mkdir -p $D; xz -dc .devrun/$BUILD/bundle.tar.xz | tar -C $D -xf -
  LOG=$OUT/iv_$BUILD.log
  { date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv; echo "build $BUILD"; } >> $LOG 2>&1
  for s in $STEPS; do
    echo "== $s at $(date -u +%T)" >> $LOG
    case $s in
      tests) for t in $D/bin/test-*; do echo "--- $t" >> $LOG; $t --test-threads 1 --nocapture >> $LOG 2>&1; echo "rc=$?" >> $LOG; done ;;
      prep) [ -d $M ] || python3 bench/gpu_prep.py $M $W >> $LOG 2>&1
        cp tests/data/tokenizer/tokenizer.json $M/ ;;
      sweep)
        for q in none q4k; do
          ref=""; [ $q = none ] && ref="--reference-dtype f32"
          for run in 1 2; do  # the second process finds the driver's compiled kernels cached
            /usr/bin/time -f "wall %e s, max RSS %M kB" $D/bin/moe-lens sweep --model $M --device cuda --quant $q \
              --text "$TEXT" --continuation "$CONT" --out $OUT/sweep_${BUILD}_${q} $ref >> $LOG 2>&1
            echo "sweep $q run $run rc=$?" >> $LOG
          done
        done ;;
    esac
  done
done
