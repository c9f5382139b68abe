#!/bin/bash
# One device call: the Python lab's pipeline and ours on the same random full-size OLMoE, same card.
#   BIN      our stripped CUDA binary (default .devrun/moe-lens)
#   B        folder holding these scripts (default bench)
#   PYLIB    optional folder put on PYTHONPATH (a trimmed bitsandbytes for the nf4 numbers)
#   STEPS    which steps, in order (default: prep bf16 f32 seed nf4 q4k q8_0; add gguf for the
#            llama.cpp check below)
#   LCPP     llama.cpp's convert_hf_to_gguf.py with its conversion/ and gguf-py/ (step gguf)
#   QUANTIZE llama.cpp's llama-quantize binary (step gguf)
#   TOK      OLMoE's tokenizer.json (step gguf: the converter needs it beside the model)
# Steps gguf, gguf-bench, gguf-ref: llama.cpp's converter makes a bf16 GGUF of the random model and
# llama-quantize the Q4_K_M file users download; we load both as they are (timings, GPU memory,
# routing); transformers runs on the Q4_K_M file's weights dequantized by gguf-py (the reference
# for what the file itself computes).
# Results under $OUT (run.log, ours_*.json, seed_baseline.json, compare.json, prep.json).
set -u
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1
[ -n "${PYLIB:-}" ] && export PYTHONPATH=$PYLIB
LLPY=${PYLIB:+:$PYLIB}
OUT=${OUT:-/tmp/out}; W=${WORK:-/tmp/ml}; M=$W/olmoe-rand; BIN=${BIN:-.devrun/moe-lens}; B=${B:-bench}
STEPS=${STEPS:-"prep bf16 f32 seed nf4 q4k q8_0"}
mkdir -p $W $OUT
LOG=$OUT/run.log
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; nproc; } >> $LOG 2>&1
T0=$(date +%s)
stamp() { echo "== $1 at $(( $(date +%s) - T0 )) s" >> $LOG; }
compare() { python3 $B/compare.py $W $OUT >> $LOG 2>&1; }
ours() {  # ours NAME ARGS...
  name=$1; shift
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > $W/smi_$name.txt 2>/dev/null & SP=$!
  $BIN bench --model $M --sents $W/sents.json --device cuda --out $OUT/ours_$name.json "$@" >> $LOG 2>&1
  echo "ours $name rc=$?" >> $LOG
  kill $SP
}
for s in $STEPS; do
  stamp $s
  case $s in
    prep) [ -d $M ] || python3 $B/gpu_prep.py $M $W >> $LOG 2>&1; cp $W/prep.json $OUT/prep.json 2>/dev/null ;;
    bf16) ours none --quant none --routing-out $W/route_none.json --sweep --variants ${BENCH_ARGS:-}; compare ;;
    f32) ours f32 --quant none --dtype f32 --only-routing --routing-out $W/route_f32.json --logits-out $W/logits_f32.json; compare ;;
    seed) SEED_MODEL_DIR=$M OUT=$OUT python3 $B/seed_baseline.py >> $LOG 2>&1; echo "seed rc=$?" >> $LOG ;;
    nf4) python3 $B/nf4_routing.py $M $W >> $LOG 2>&1; echo "nf4 rc=$?" >> $LOG; compare ;;
    q4k|q8_0) ours $s --quant $s --routing-out $W/route_$s.json --fresh ${BENCH_ARGS:-}; compare ;;
    cold)  # loads after dropping the page cache (root on the device): the q4k cache, the bf16 safetensors
      for q in q4k none; do
        sync; echo 3 > /proc/sys/vm/drop_caches && echo "page cache dropped: $(free -m | awk '/Mem:/ {print $6}') MiB cached" >> $LOG
        $BIN bench --model $M --sents $W/sents.json --device cuda --quant $q --only-routing --routing-n 1 \
          --out $OUT/cold_$q.json >> $LOG 2>&1; echo "cold $q rc=$?" >> $LOG
      done ;;
    gguf)  # llama.cpp's converter and llama-quantize make the files users download
      if [ ! -f $W/olmoe-Q4_K_M.gguf ]; then
        cp $TOK $M/tokenizer.json
        PYTHONPATH=$LCPP/gguf-py$LLPY python3 $LCPP/convert_hf_to_gguf.py $M --outtype bf16 \
          --outfile $W/olmoe-bf16.gguf > $W/convert.log 2>&1; echo "convert rc=$?" >> $LOG; tail -3 $W/convert.log >> $LOG
        stamp quantize
        $QUANTIZE $W/olmoe-bf16.gguf $W/olmoe-Q4_K_M.gguf Q4_K_M $(nproc) > $W/quantize.log 2>&1; echo "quantize rc=$?" >> $LOG
        ls -l $W/*.gguf >> $LOG
      fi ;;
    gguf-bench)  # ours on both files as they are: timings, GPU memory, routing
      KEEP=$M
      M=$W/olmoe-Q4_K_M.gguf; ours gguf_q4km --routing-out $W/route_gguf_q4km.json --no-loop
      M=$W/olmoe-bf16.gguf; ours gguf_bf16 --only-routing --routing-out $W/route_gguf_bf16.json
      M=$KEEP; compare ;;
    gguf-ref)  # transformers on the Q4_K_M file's weights, dequantized by llama.cpp's gguf-py
      PYTHONPATH=$LCPP/gguf-py$LLPY python3 $B/gguf_reference.py $W/olmoe-Q4_K_M.gguf $M $W/sents.json $W gguf_q4km 100 cuda >> $LOG 2>&1
      echo "gguf-ref rc=$?" >> $LOG
      KEEP=$M; M=$W/olmoe-Q4_K_M.gguf
      ours gguf_q4km_f32 --dtype f32 --only-routing --routing-out $W/route_gguf_q4km_f32.json
      M=$KEEP; compare ;;
  esac
done
stamp done
grep -E "rc=|^== |single|loop over|batched:|generate|load \(|error|Error" $LOG | tail -60
python3 -c "
import json; c=json.load(open('$OUT/compare.json'))
for k,v in c.items():
    if isinstance(v,dict) and 'top8_set_equal' in v: print(f\"{k:28s} eq {v['top8_set_equal']:.4f} ov {v['mean_top8_overlap']:.4f} top1 {v['top1_agree']:.4f}\")
    else: print(k, v)
" 2>&1 | tail -40
