#!/bin/bash
# The shared model server under a class's load (#19) on one GPU: `moe-lens serve` with OLMoE's
# shape and 4-bit experts (the random full-size OLMoE of bench/gpu_prep.py, as the other GPU checks
# use: the device has no network; timings do not depend on the weights' values), then
# `moe-lens loadtest` with N simulated students, each running notebook 01's and 02's kinds of
# requests (traces of short sentences, a 10-token generation, a 24-sentence scan) with think time.
#   BUILD     the build to run, from .devrun/$BUILD/bundle.tar.xz (bench/build_cuda.sh); default 90
#   CLIENTS   default "40 200";  DURATION seconds per run, default 60;  THINK_MS default 2000
#   MODEL     a model directory to serve instead of the random OLMoE (e.g. the real one, if present)
#   BATCHES   the servers to compare, by --batch-traces; default "16 1" (traces of different students
#             run together; then each alone, the default)
# Results under $OUT: serve_load.log, loadtest_<N>_b<B>.json, nvidia-smi samples in gpu_<N>_b<B>.csv.
set -u
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
OUT=${OUT:-/tmp/out}; W=${WORK:-/tmp/ml}; BUILD=${BUILD:-90}
CLIENTS=${CLIENTS:-"40 200"}; DURATION=${DURATION:-60}; THINK_MS=${THINK_MS:-2000}; BATCHES=${BATCHES:-"16 1"}
mkdir -p $W $OUT
LOG=$OUT/serve_load.log
D=/tmp/b$BUILD; [ -x $D/bin/moe-lens ] || { mkdir -p $D; xz -dc .devrun/$BUILD/bundle.tar.xz | tar -C $D -xf -; }
M=${MODEL:-$W/olmoe-rand}
if [ -z "${MODEL:-}" ]; then
  [ -d $M ] || python3 bench/gpu_prep.py $M $W >> $LOG 2>&1
  [ -f $M/tokenizer.json ] || cp tests/data/tokenizer/tokenizer.json $M/ 2>/dev/null \
    || xz -dc .devrun/tok/tokenizer.json.xz > $M/tokenizer.json
fi
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv; echo "build $BUILD, model $M"; } >> $LOG 2>&1
for B in $BATCHES; do
SD=$(mktemp -d); chmod 700 $SD; SOCK=$SD/class.sock
echo "== server with --batch-traces $B" >> $LOG
/usr/bin/time -f "serve: wall %e s, max RSS %M kB" $D/bin/moe-lens serve --model $M --device cuda --quant q4k \
  --socket $SOCK --max-clients 1024 --batch-traces $B >> $LOG 2>&1 &
SERVE=$!
for _ in $(seq 1 600); do [ -S $SOCK ] && break; kill -0 $SERVE 2>/dev/null || break; sleep 0.5; done
[ -S $SOCK ] || { echo "no socket: the server did not start" >> $LOG; exit 1; }
for N in $CLIENTS; do
  echo "== $N students, ${DURATION} s, think ${THINK_MS} ms, batch $B at $(date -u +%T)" >> $LOG
  nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv -lms 500 > $OUT/gpu_${N}_b$B.csv 2>/dev/null &
  SMI=$!
  $D/bin/moe-lens loadtest --server $SOCK --clients $N --duration $DURATION --think-ms $THINK_MS \
    --json $OUT/loadtest_${N}_b$B.json >> $LOG 2>&1
  echo "loadtest $N rc=$?" >> $LOG
  kill $SMI 2>/dev/null
  echo "GPU memory used, MiB (max over the run): $(awk -F', ' 'NR>1{gsub(/ MiB/,"",$2); if($2>m)m=$2} END{print m}' $OUT/gpu_${N}_b$B.csv)" >> $LOG
done
# one process holds the weights: the GPU's processes
nvidia-smi --query-compute-apps=pid,used_memory --format=csv >> $LOG 2>&1
kill $SERVE; pkill -TERM -f "bin/moe-lens serve"; wait $SERVE 2>/dev/null; sleep 1
rm -rf $SD
done
cat $LOG
