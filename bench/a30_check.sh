#!/bin/bash
# The A30 build (CUDA_COMPUTE_CAP=80) against the H100/H200 build (90) on one card: the routing of
# every expert path (one-by-one traces, a greedy generation, both quantized kernels), the batched
# bench, the GPU tests, and a 12 GB slice simulated; then the two builds compared path by path.
#   BUILDS  which builds, in order (default "90 80"); each one's binaries: .devrun/$BUILD/{moe-lens,
#           lib-tests,cuda_fused}, plain or .xz, or all of them in .devrun/bins.tar.xz as $BUILD/...
#   STEPS   default: "prep routing bench tests slice" for each build, then "compare" once
# The model and results stay in $WORK between calls. Results under $OUT (a30_<build>.log,
# bench_<build>_<quant>.json, slice_*, builds.json, compare.log).
set -u
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; W=${WORK:-/tmp/ml}; M=$W/olmoe-rand; B=${B:-bench}
BUILDS=${BUILDS:-"90 80"}; STEPS=${STEPS:-"prep routing bench tests slice"}
PATHS=${PATHS:-all}  # which routing dumps (names below), or all
want() { [ "$PATHS" = all ] || [[ " $PATHS " == *" $1 "* ]]; }
mkdir -p $W $OUT
[ -f .devrun/bins.tar.xz ] && mkdir -p /tmp/bins && xz -dc .devrun/bins.tar.xz | tar -C /tmp/bins -xf -
T0=$(date +%s)
for BUILD in $BUILDS; do
D=/tmp/bin$BUILD
mkdir -p $D
LOG=$OUT/a30_$BUILD.log
for f in moe-lens lib-tests cuda_fused; do
  if [ -f /tmp/bins/$BUILD/$f ]; then cp /tmp/bins/$BUILD/$f $D/
  elif [ -f .devrun/$BUILD/$f.xz ]; then xz -dc .devrun/$BUILD/$f.xz > $D/$f; elif [ -f .devrun/$BUILD/$f ]; then cp .devrun/$BUILD/$f $D/; fi
  [ -f $D/$f ] && chmod +x $D/$f
done
BIN=$D/moe-lens
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv; echo "build $BUILD"; } >> $LOG 2>&1
stamp() { echo "== $1 at $(( $(date +%s) - T0 )) s" >> $LOG; }
dump() {  # dump NAME QUANT [VAR=VALUE...]: routing and router logits of the first 20 sentences, one
          # by one, and of a greedy generation; $EXTRA: more bench arguments
  name=$1; q=$2; shift 2
  want $name || return 0
  env "$@" $BIN bench ${EXTRA:-} --model $M --sents $W/sents.json --device cuda --quant $q --only-routing --routing-n 20 \
    --gen-routing --routing-out $W/route_${BUILD}_$name.json --logits-out $W/logits_${BUILD}_$name.json --out $W/dump_${BUILD}_$name.json >> $LOG 2>&1
  echo "dump $name rc=$?" >> $LOG
}
for s in $STEPS; do
  stamp $s
  case $s in
    prep) [ -d $M ] || python3 $B/gpu_prep.py $M $W >> $LOG 2>&1
      # OLMoE's tokenizer (carried in bins.tar.xz as tok/), for the CLI's trace
      [ -f /tmp/bins/tok/tokenizer.json ] && cp /tmp/bins/tok/tokenizer.json $M/ ;;
    routing)
      dump bf16 none
      dump bf16_unfused none MOE_LENS_FUSED=0
      dump q4k q4k                                   # default: short inputs through ml_qmm
      dump q4k_expanded q4k MOE_LENS_DEQUANT_MIN=1   # experts expanded to bf16 for cuBLAS
      dump q4k_unfused q4k MOE_LENS_FUSED=0
      dump q8_0 q8_0
      dump q8_0_expanded q8_0 MOE_LENS_DEQUANT_MIN=1
      EXTRA="--dtype f32" dump f32 none ;;
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
  esac
done
stamp done
grep -E "rc=|^== |single|batched:|generate|load \(|rror|GiB|test result|panicked|passed|failed" $LOG | tail -60
done
python3 $B/compare_builds.py $W $OUT/builds.json > $OUT/compare.log 2>&1; cat $OUT/compare.log
