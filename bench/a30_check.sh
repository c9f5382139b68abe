#!/bin/bash
# The A30 build (CUDA_COMPUTE_CAP=80) against the H100/H200 build (90) on one card: the routing of
# every expert path, the batched bench, the GPU tests, and a 12 GB slice simulated. One build per
# call (what travels to the device is limited); the model and results stay in $WORK between calls.
#   BUILD   80 or 90: which build this call runs (its binaries under .devrun/$BUILD/)
#   STEPS   default: "prep routing bench tests slice"; "compare" once both builds have run
# .devrun/$BUILD/: moe-lens (the CLI), lib-tests and cuda_fused (test binaries), each xz-compressed
# or not. Results under $OUT (a30_<build>.log, bench_<build>_<quant>.json, builds.json).
set -u
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; W=${WORK:-/tmp/ml}; M=$W/olmoe-rand; B=${B:-bench}; BUILD=${BUILD:-90}
STEPS=${STEPS:-"prep routing bench tests slice"}
D=/tmp/bin$BUILD
mkdir -p $W $OUT $D
LOG=$OUT/a30_$BUILD.log
for f in moe-lens lib-tests cuda_fused; do
  if [ -f .devrun/$BUILD/$f.xz ]; then xz -dc .devrun/$BUILD/$f.xz > $D/$f; elif [ -f .devrun/$BUILD/$f ]; then cp .devrun/$BUILD/$f $D/; fi
  [ -f $D/$f ] && chmod +x $D/$f
done
BIN=$D/moe-lens
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv; echo "build $BUILD"; } >> $LOG 2>&1
T0=$(date +%s)
stamp() { echo "== $1 at $(( $(date +%s) - T0 )) s" >> $LOG; }
dump() {  # dump NAME QUANT [ENV...]: routing and router logits of the first 20 sentences, one by one
  name=$1; q=$2; shift 2
  env "$@" $BIN bench --model $M --sents $W/sents.json --device cuda --quant $q --only-routing --routing-n 20 \
    --routing-out $W/route_${BUILD}_$name.json --logits-out $W/logits_${BUILD}_$name.json --out $W/dump_${BUILD}_$name.json >> $LOG 2>&1
  echo "dump $name rc=$?" >> $LOG
}
for s in $STEPS; do
  stamp $s
  case $s in
    prep) [ -d $M ] || python3 $B/gpu_prep.py $M $W >> $LOG 2>&1 ;;
    routing)
      dump bf16 none
      dump bf16_unfused none MOE_LENS_FUSED=0
      dump q4k q4k                                   # default: short inputs through ml_qmm
      dump q4k_expanded q4k MOE_LENS_DEQUANT_MIN=1   # experts expanded to bf16 for cuBLAS
      dump q4k_unfused q4k MOE_LENS_FUSED=0
      dump q8_0 q8_0
      dump q8_0_expanded q8_0 MOE_LENS_DEQUANT_MIN=1
      dump f32 none --dtype f32 2>/dev/null || true ;;
    bench)  # timings, the batched path (which aborted in the old sm_80 build), peak memory
      for q in q4k none; do
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > $OUT/smi_${BUILD}_$q.txt 2>/dev/null & SP=$!
        $BIN bench --model $M --sents $W/sents.json --device cuda --quant $q --out $OUT/bench_${BUILD}_$q.json --routing-n 1 >> $LOG 2>&1
        echo "bench $q rc=$?" >> $LOG; kill $SP
      done ;;
    tests)  # the GPU tests; they find the fixtures through the path they were built at
      mkdir -p /work && [ -e /work/main ] || ln -s "$PWD" /work/main
      for t in lib-tests cuda_fused; do
        [ -x $D/$t ] || { echo "test $t: no binary" >> $LOG; continue; }
        (cd crates/moe-lens && $D/$t --test-threads=1 $( [ $t = lib-tests ] && echo "fused::" ) --nocapture) >> $LOG 2>&1
        echo "test $t rc=$?" >> $LOG
      done ;;
    slice)  # a 12 GB MIG slice: another process holds all but 11.5 GiB
      python3 -c "import torch,time; f,_=torch.cuda.mem_get_info(); x=torch.empty(f-int(11.5*2**30),dtype=torch.uint8,device='cuda'); print('holding', x.numel()/2**30, 'GiB', flush=True); time.sleep(600)" >> $LOG 2>&1 &
      HP=$!; sleep 15; nvidia-smi --query-gpu=memory.used,memory.total --format=csv >> $LOG
      TXT="The quick brown fox jumps. 안녕하세요. こんにちは."
      /usr/bin/time -f "trace q4k: %e s wall, %M KiB max RSS" $BIN trace --model $M --text "$TXT" --device cuda --quant q4k >> $LOG 2>&1; echo "slice trace q4k rc=$?" >> $LOG
      $BIN bench --model $M --sents $W/sents.json --device cuda --quant q4k --no-loop --routing-n 1 --out $OUT/slice_${BUILD}_q4k.json >> $LOG 2>&1; echo "slice bench q4k rc=$?" >> $LOG
      RUST_BACKTRACE=1 $BIN trace --model $M --text "$TXT" --device cuda --quant none > $OUT/slice_${BUILD}_bf16_message.txt 2>&1; echo "slice trace bf16 rc=$? (expected: 1, the message below)" >> $LOG
      cat $OUT/slice_${BUILD}_bf16_message.txt >> $LOG
      kill $HP; wait $HP 2>/dev/null ;;
    compare) python3 $B/compare_builds.py $W $OUT/builds.json >> $LOG 2>&1 ;;
  esac
done
stamp done
grep -E "rc=|^== |single|batched:|generate|load \(|rror|GiB|test result|panicked|passed|failed" $LOG | tail -80
