#!/usr/bin/env bash
# The class set-up's CUDA path on a real GPU (issue #14), on a lent GPU machine that has a GPU, its
# driver, nvcc and Python but no Rust and no network: what INSTRUCTORS.md has an instructor and a
# student do on a GPU server, with the parts a shared install made on a machine with network.
# The parts, as made for bench/results/h200-s11-class (PREFIX=/opt/mlc, the same path there):
#   kernel-setup/install.sh --shared /opt/mlc         (MOE_LENS_SKIP_PREWARM=1 will do: the CUDA
#                                                      warm build is made on the GPU machine)
#   cd /opt/mlc && tar -cf - --exclude='*san.a' rust/bin/rustc rust/bin/cargo rust/lib/libLLVM* \
#     rust/lib/librustc_driver* rust/lib/rustlib/{components,manifest-*,multirust-config.toml} \
#     rust/lib/rustlib/rust-installer-version rust/lib/rustlib/x86_64-unknown-linux-gnu | xz -9e > rust.tar.xz
#   tar -cf - rust/lib/rustlib/src bin/evcxr_jupyter bin/moe-lens-student-setup \
#     bin/.evcxr_jupyter.version kernel src moe-lens-shared.env vendor | xz -9 > mlc.tar.xz
#   split -b 45M -a 2 rust.tar.xz rust.tar.xz.part; split -b 45M -a 2 mlc.tar.xz mlc.tar.xz.part
#   xz -9 < (a stripped CPU build of the moe-lens CLI) > moe-lens-cli.xz
#   whl/: pip download --python-version 3.12 ... nbclient nbformat jupyter_client (see the device
#   README); SUMS: sha256sum of the parts, the CLI and whl/*; each call carries under 64 MiB
#
#   bench/gpu_class.sh unpack PARTS_DIR   parts into PREFIX (/opt/mlc), checked against their sums
#   bench/gpu_class.sh instructor         the shared install's CUDA part, on this machine: its nvcc,
#                                         its driver; the CUDA warm build, as install.sh --shared does it
#   bench/gpu_class.sh student            a second Unix user: the set-up (timed, no compiler), the
#                                         first :dep cell (timed, nothing recompiled), the four
#                                         notebooks on the demo model on the GPU, checked
#   bench/gpu_class.sh model              only the full-size random OLMoE, at /opt/olmoe-random
#   bench/gpu_class.sh olmoe              a full-size random OLMoE (transformers, on the GPU), the
#                                         instructor's `moe-lens prepare --quant q4k`, then the
#                                         student's kernel on a simulated 12 GB slice: a trace agreeing
#                                         with transformers, GPU and host memory, the refusal of bf16
#
# Results and logs go to $OUT (default /tmp/gpu-class-out).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
prefix=${GPU_CLASS_PREFIX:-/opt/mlc}
out=${OUT:-/tmp/gpu-class-out}
mkdir -p "$out"
student=moe-lens-student
cli=${GPU_CLASS_CLI:-/usr/local/bin/moe-lens}
py=python3
log() { echo "gpu-class: $*" | tee -a "$out/summary.txt"; }
fail() { log "FAILED: $*"; exit 1; }

# what this machine's CUDA is: the driver library, the toolkit's nvcc and libraries
cuda_setup() {
  nvcc_bin=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc 2>/dev/null | head -1)
  [ -x "$nvcc_bin" ] || fail "no nvcc on this machine"
  libdirs=""
  for d in /opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib /usr/local/cuda-13.0/targets/x86_64-linux/lib \
           "$(dirname "$(dirname "$nvcc_bin")")/lib64"; do
    [ -d "$d" ] && libdirs=${libdirs:+$libdirs:}$d
  done
  libcuda=$(ldconfig -p | awk '/libcuda\.so\.1 /{print $NF; exit}')
  [ -n "$libcuda" ] || libcuda=$(ls /usr/local/nvidia/lib64/libcuda.so.1 /usr/lib/x86_64-linux-gnu/libcuda.so.1 2>/dev/null | head -1)
  [ -n "$libcuda" ] || fail "no libcuda.so.1 (the driver's library)"
}

unpack() {
  local parts=${1:?PARTS_DIR}
  (cd "$parts" && sha256sum -c SUMS >/dev/null) || fail "a part is missing or damaged: $(cd "$parts" && sha256sum -c SUMS 2>&1 | grep -v ': OK' | head -3)"
  rm -rf "$prefix"; mkdir -p "$prefix"
  for base in rust mlc; do cat "$parts/$base.tar.xz.part"* | xz -dc | tar -C "$prefix" -xf -; done
  mkdir -p "$(dirname "$cli")"; xz -dc "$parts/moe-lens-cli.xz" > "$cli" && chmod 755 "$cli"
  # the lab's Python, as far as the set-up and execute.py use it (the real lab-venv holds
  # JupyterLab too; its wheels are for the instructor's Python, not this machine's)
  local venv=$prefix/lab-venv
  if "$py" -m venv "$venv" >/dev/null 2>&1 && "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    "$venv/bin/python" -m pip install -q --no-index --no-deps --no-compile "$parts"/whl/*.whl
  else
    rm -rf "$venv"; "$py" -m venv --without-pip "$venv"
    "$py" -m pip --python "$venv/bin/python" install -q --no-index --no-deps --no-compile "$parts"/whl/*.whl
  fi || fail "could not install the wheels into $venv"
  "$venv/bin/jupyter" kernelspec list >/dev/null || fail "no jupyter in $venv"
  log "unpacked: $(du -sh "$prefix" | cut -f1) in $prefix; rustc $("$prefix/rust/bin/rustc" --version)"
}

instructor() {
  cuda_setup
  # CUDA_ROOT as an instructor's `module load cuda` gives it: one folder whose lib/ has the
  # unversioned libraries the CUDA crates link (the driver's own libcuda, cuBLAS, cuRAND, NVRTC)
  local root=/opt/mlc-cuda
  rm -rf "$root"; mkdir -p "$root/lib"
  ln -s "$libcuda" "$root/lib/libcuda.so"
  for l in cublas cublasLt curand nvrtc cudart; do
    f=$(for d in ${libdirs//:/ }; do ls "$d"/lib$l.so.* 2>/dev/null; done | grep -v alt | head -1)
    [ -n "$f" ] || fail "no lib$l.so.* in $libdirs"
    ln -s "$f" "$root/lib/lib$l.so"
  done
  cap=80  # the A30's build (the driver compiles its PTX for this card)
  # this checkout's scripts, as `install.sh --shared` copies them again after a `git pull`
  cp "$here"/kernel-setup/*.sh "$here"/kernel-setup/*.py "$prefix/src/kernel-setup/"
  install -m 755 "$here/kernel-setup/shared-kernel.sh" "$prefix/kernel/evcxr-kernel"
  # what install.sh --shared writes (shared-install.sh, "GPU or CPU"), for this machine's CUDA
  {
    grep -v '^MOE_LENS_SHARED_\(CUDA\|BUILD_ENV\)' "$prefix/moe-lens-shared.env"
    echo "MOE_LENS_SHARED_CUDA=1"
    echo "MOE_LENS_SHARED_CUDA_CAP=$cap"
    echo "MOE_LENS_SHARED_NVCC_DIR=$(dirname "$nvcc_bin")"
    echo "MOE_LENS_SHARED_CUDA_ENV=1"
    for v in CUDA_HOME CUDA_PATH CUDA_TOOLKIT_ROOT_DIR CUDNN_LIB CUDARC_CUDA_VERSION NVCC NVCC_CCBIN LIBRARY_PATH; do
      echo "MOE_LENS_SHARED_CUDA_ENV_$v=''"
    done
    echo "MOE_LENS_SHARED_CUDA_ENV_CUDA_ROOT=$root"
    echo "MOE_LENS_SHARED_CUDA_ENV_LD_LIBRARY_PATH=$libdirs:$(dirname "$libcuda")"
    # shellcheck source=kernel-setup/build-env.sh
    . "$here/kernel-setup/build-env.sh"
    moe_lens_build_env_record | grep -v '^MOE_LENS_SHARED_BUILD_ENV=1$' || true
    echo "MOE_LENS_SHARED_BUILD_ENV=1"
  } > "$prefix/moe-lens-shared.env.new"
  mv "$prefix/moe-lens-shared.env.new" "$prefix/moe-lens-shared.env"
  # the warm build, as shared-install.sh's "warm build" step runs it
  local warm=$prefix/warm/cuda jp
  rm -rf "$warm"; mkdir -p "$warm"
  jp=$(mktemp -d); mkdir -p "$jp/kernels/moe-lens-shared-warm"
  cp "$prefix/kernel/spec/kernel.json" "$jp/kernels/moe-lens-shared-warm/kernel.json"
  std_dir=$("$prefix/rust/bin/rustc" --print target-libdir)
  local t0; t0=$(date +%s)
  LD_LIBRARY_PATH=$std_dir JUPYTER_PATH=$jp EVCXR_TMPDIR=$warm MOE_LENS_KERNEL_MODE=cuda \
    MOE_LENS_HOME=$prefix/warm/.state-cuda PATH=$prefix/rust/bin:$PATH \
    "$prefix/lab-venv/bin/python" "$prefix/src/kernel-setup/execute.py" --warm-up "$prefix/src/notebooks" \
    --kernel moe-lens-shared-warm 2>&1 | tee "$out/instructor-warm.log" | tail -5
  [ "${PIPESTATUS[0]}" = 0 ] || fail "the CUDA warm build failed (instructor-warm.log)"
  rm -rf "$jp" "$prefix/warm/.state-cuda"
  date +%s > "$warm/stamp"
  chmod -R a+rX,go-w "$prefix" "$root"
  log "instructor: CUDA warm build (sm_$cap, $(nproc) cores) in $(( $(date +%s) - t0 )) s, $(du -sh "$warm/target" | cut -f1); recorded: $(grep '^MOE_LENS_SHARED_BUILD_ENV_' "$prefix/moe-lens-shared.env" | tr '\n' ' ')"
}

as_student() {
  runuser -u "$student" -- env -i HOME="$shome" USER="$student" LOGNAME="$student" \
    PATH=/usr/local/bin:/usr/bin:/bin${smi_dir:+:$smi_dir} LANG=C.UTF-8 "$@"
}
student_user() {
  id "$student" >/dev/null 2>&1 || useradd -m -s /bin/bash "$student"
  shome=$(getent passwd "$student" | cut -d: -f6)
  smi_dir=$(dirname "$(command -v nvidia-smi)")
}

student() {
  student_user
  [ -d /var/tmp/.cargo ] || install -d -m 755 /var/tmp/.cargo /tmp/.cargo   # the root guards (build-dir.sh)
  as_student bash -c 'command -v cargo || command -v rustc' && fail "the student's PATH has Rust"
  local watch t1 ms
  watch=$(mktemp)
  ( while :; do pgrep -u "$student" -a -x 'rustc|cargo|cc|ld' >> "$watch" 2>/dev/null || true; sleep 0.1; done ) &
  local watcher=$!
  t1=$(date +%s%N)
  as_student bash "$prefix/src/kernel-setup/install.sh" > "$out/student-setup.log" 2>&1 || { cat "$out/student-setup.log"; fail "the student's set-up"; }
  ms=$(( ($(date +%s%N) - t1) / 1000000 ))
  kill "$watcher"; wait "$watcher" 2>/dev/null || true
  [ -s "$watch" ] && fail "a compiler ran during the set-up: $(sort -u "$watch" | head -3)"
  log "student: set-up $((ms / 1000)).$((ms % 1000 / 100)) s, no compiler ran; $(grep 'build folder' "$out/student-setup.log")"
  slot=$(cat "$shome/.local/share/moe-lens/.seeded")
  case $slot in *shared-cuda-*) ;; *) fail "the set-up seeded $slot, not a CUDA build folder (nvidia-smi sees a GPU)";; esac
  built() { find "$slot/target" \( -name '*.rlib' -o -name output \) -printf '%P %T@ %s\n' | sort; }
  local before; before=$(built)
  as_student env MOE_LENS_NO_PROGRESS=1 "$prefix/lab-venv/bin/python" "$prefix/src/kernel-setup/execute.py" \
    --warm-up "$shome/moe-lens-lab/notebooks" --kernel moe-lens-rust > "$out/student-first-cell.log" 2>&1 \
    || { tail -30 "$out/student-first-cell.log"; fail "the student's first CUDA :dep cell"; }
  log "student: first CUDA :dep cell: $(sed -n 's/^ *warm-up cell 0: \([0-9.]*\) s$/\1/p' "$out/student-first-cell.log" | tail -1) s"
  [ "$(built)" = "$before" ] && log "student: nothing recompiled" \
    || log "student: RECOMPILED: $(diff <(echo "$before") <(built) | grep '^>' | head -5 | tr '\n' ' ')"
  # the notebooks on the demo model, on the GPU (MOE_LENS_DEVICE=cuda: a load that falls back to the
  # CPU would fail instead)
  local done_dir=$shome/executed
  as_student mkdir -p "$done_dir"
  [ "${GPU_CLASS_NOTEBOOKS:-1}" = 1 ] || return 0
  for nb in "$shome"/moe-lens-lab/notebooks/*.ipynb; do
    name=$(basename "$nb"); t1=$(date +%s)
    as_student env MOE_LENS_MODEL=demo MOE_LENS_DEVICE=cuda MOE_LENS_NO_PROGRESS=1 \
      "$prefix/lab-venv/bin/python" "$prefix/src/kernel-setup/execute.py" --run "$nb" --out "$done_dir/$name" \
      > "$out/nb-$name.log" 2>&1 || { tail -20 "$out/nb-$name.log"; log "student: $name FAILED"; }
    mkdir -p "$out/notebooks"; cp "$done_dir/$name" "$out/notebooks/" 2>/dev/null || true
    [ -f "$out/notebooks/$name" ] || continue
    log "student: $name ran on the GPU in $(( $(date +%s) - t1 )) s"
  done
  "$py" "$here/tests/check_notebooks.py" "$out/notebooks" > "$out/check.log" 2>&1 && log "student: check_notebooks: $(tail -1 "$out/check.log")" \
    || { tail -15 "$out/check.log"; log "student: check_notebooks FAILED"; }
  "$py" - "$out/notebooks" <<'PY' | tee -a "$out/summary.txt"
import json, sys
from pathlib import Path
for nb in sorted(Path(sys.argv[1]).glob("*.ipynb")):
    for c in json.loads(nb.read_text())["cells"]:
        for o in c.get("outputs", []):
            t = o.get("text", "")
            t = "".join(t) if isinstance(t, list) else t
            for line in t.splitlines():
                if "cuda" in line.lower() or "loaded in" in line:
                    print(f"    {nb.name}: {line[:300]}")
PY
}

# make_model: the full-size OLMoE with random weights at $model (once)
model=/opt/olmoe-random
make_model() {
  if [ ! -f "$model/config.json" ]; then
    local t0; t0=$(date +%s)
    "$py" - "$model" <<'PY' || fail "making the random OLMoE"
import sys, torch
from transformers import OlmoeConfig, OlmoeForCausalLM
cfg = OlmoeConfig(vocab_size=50304, hidden_size=2048, intermediate_size=1024, num_hidden_layers=16,
                  num_attention_heads=16, num_key_value_heads=16, num_experts=64, num_experts_per_tok=8,
                  max_position_embeddings=4096, rope_theta=10000.0, norm_topk_prob=False, clip_qkv=None,
                  rms_norm_eps=1e-5, tie_word_embeddings=False, pad_token_id=1, bos_token_id=None, eos_token_id=50279)
torch.manual_seed(0)
torch.set_default_dtype(torch.bfloat16)
with torch.device("cuda"):
    m = OlmoeForCausalLM(cfg)
g = torch.Generator(device="cuda").manual_seed(0)
with torch.no_grad():  # bench/gpu_prep.py's "decisive" init: router logits O(1), few near-ties
    for name, p in m.named_parameters():
        if name.endswith("norm.weight"): v = 1.0 + 0.2 * torch.randn(p.shape, generator=g, device="cuda")
        elif "embed_tokens" in name: v = torch.randn(p.shape, generator=g, device="cuda")
        else: v = torch.randn(p.shape, generator=g, device="cuda") * (1.5 / p.shape[-1] ** 0.5)
        p.copy_(v.to(torch.bfloat16))
m.save_pretrained(sys.argv[1])
PY
    cp "${GPU_CLASS_TOKENIZER:-$prefix/src/crates/moe-lens/data/demo/tokenizer.json}" "$model/"
    log "olmoe: random full-size OLMoE made in $(( $(date +%s) - t0 )) s ($(du -sh "$model" | cut -f1))"
  fi
}

olmoe() {
  student_user
  make_model
  # transformers' float32 eager routing of the test sentence: the reference
  local text="The quick brown fox jumps over the lazy dog. 빠른 갈색 여우가 게으른 개를 뛰어넘는다. 素早い茶色の狐がのろまな犬を飛び越える。"
  "$py" - "$model" "$text" "$out/olmoe-ref.json" <<'PY' || fail "the transformers reference"
import json, sys, torch
from tokenizers import Tokenizer
from transformers import OlmoeForCausalLM
model_dir, text, dest = sys.argv[1:4]
ids = Tokenizer.from_file(model_dir + "/tokenizer.json").encode(text, add_special_tokens=False).ids
m = OlmoeForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="eager").cuda().eval()
out = []
def hook(mod, i, o):
    x = (o[0] if isinstance(o, tuple) else o).float()
    out.append(torch.topk(x.reshape(-1, x.shape[-1]), 8, -1).indices.cpu().tolist())
hooks = [mod.register_forward_hook(hook)
         for n, mod in m.named_modules() if n.endswith("mlp.gate")]
with torch.no_grad(): m(torch.tensor([ids], device="cuda"))
json.dump({"ids": ids, "top8": out}, open(dest, "w"))
PY
  # the instructor: the q4k cache, once, next to the model (then read-only for students)
  local t0; t0=$(date +%s)
  /usr/bin/time -v "$cli" prepare --model "$model" --quant q4k > "$out/prepare.log" 2>&1 || { tail "$out/prepare.log"; fail "moe-lens prepare"; }
  log "olmoe: moe-lens prepare --quant q4k in $(( $(date +%s) - t0 )) s, peak RSS $(awk '/Maximum resident/{printf "%.1f GB", $NF/1e6}' "$out/prepare.log")"
  chmod -R a+rX,go-w "$model"
  # a 12 GB slice: another process holds the rest of the card
  "$py" -c "import torch,time; f,_=torch.cuda.mem_get_info(); x=torch.empty(f-int(12*2**30),dtype=torch.uint8,device='cuda'); print('held', flush=True); time.sleep(900)" > "$out/hold.log" 2>&1 &
  local holder=$!
  for _ in $(seq 60); do grep -q held "$out/hold.log" 2>/dev/null && break; sleep 1; done
  nvidia-smi --query-gpu=memory.used,memory.total --format=csv > "$out/olmoe-smi-before.csv"
  # the student's notebook: doctor, a load on the slice (q4k, the default), a trace, the memory, and
  # what a bf16 load says there
  local nbdir=$shome/moe-lens-lab/notebooks
  "$py" - "$nbdir/olmoe-gpu.ipynb" "$text" <<'PY'
import json, sys
dest, text = sys.argv[1:3]
cells = [
    ':dep moe-lens = { path = "../crates/moe-lens" }\nuse moe_lens::prelude::*;',
    'println!("{}", moe_lens::doctor::doctor()?);',
    'let t0 = std::time::Instant::now();\nlet lens = Lens::from_env()?;\nprintln!("LOAD_S {:.1}", t0.elapsed().as_secs_f64());',
    'let trace = lens.trace(%s)?;\nlet t0 = std::time::Instant::now();\nlet trace = lens.trace(%s)?;\nprintln!("TRACE_MS {:.2}", t0.elapsed().as_secs_f64() * 1e3);\n'
    'let ids: Vec<u32> = trace.tokens.iter().map(|t| t.id).collect();\n'
    'let top: Vec<Vec<Vec<u32>>> = trace.layers.iter().map(|l| l.top_k.clone()).collect();\n'
    'std::fs::write(std::env::var("GPU_CLASS_TRACE")?, format!("{{\\"ids\\": {:?}, \\"top8\\": {:?}}}", ids, top))?;' % (json.dumps(text, ensure_ascii=False), json.dumps(text, ensure_ascii=False)),
    'let status = std::fs::read_to_string("/proc/self/status")?;\nfor l in status.lines().filter(|l| l.starts_with("VmHWM") || l.starts_with("VmRSS")) { println!("{l}"); }\n'
    'let smi = std::process::Command::new("nvidia-smi").args(["--query-compute-apps=pid,used_memory", "--format=csv,noheader"]).output()?;\n'
    'println!("PID {} GPU {}", std::process::id(), String::from_utf8_lossy(&smi.stdout));',
    'match moe_lens::lab::load_with("", "none", "cuda") { Ok(_) => println!("BF16 LOADED"), Err(e) => println!("BF16 REFUSED: {e}") }',
]
nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [], "source": c} for i, c in enumerate(cells)],
      "metadata": {"kernelspec": {"display_name": "Rust (moe-lens)", "language": "rust", "name": "moe-lens-rust"}},
      "nbformat": 4, "nbformat_minor": 5}
json.dump(nb, open(dest, "w"))
PY
  chown "$student" "$nbdir/olmoe-gpu.ipynb"
  as_student env MOE_LENS_MODEL="$model" MOE_LENS_DEVICE=cuda:0 MOE_LENS_NO_PROGRESS=1 GPU_CLASS_TRACE="$shome/olmoe-trace.json" \
    "$prefix/lab-venv/bin/python" "$prefix/src/kernel-setup/execute.py" --run "$nbdir/olmoe-gpu.ipynb" --out "$shome/olmoe-gpu.ipynb" \
    > "$out/olmoe-nb.log" 2>&1 || { tail -30 "$out/olmoe-nb.log"; log "olmoe: the student's notebook FAILED"; }
  cp "$shome/olmoe-gpu.ipynb" "$shome/olmoe-trace.json" "$out/" 2>/dev/null || true
  kill "$holder" 2>/dev/null || true
  "$py" - "$out" <<'PY' | tee -a "$out/summary.txt"
import json, sys
out = sys.argv[1]
nb = json.load(open(f"{out}/olmoe-gpu.ipynb"))
for c in nb["cells"]:
    for o in c.get("outputs", []):
        t = o.get("text") or "".join(o.get("data", {}).get("text/plain", ""))
        if isinstance(t, list): t = "".join(t)
        for line in t.splitlines():
            print("    " + line[:400])
ref, ours = json.load(open(f"{out}/olmoe-ref.json")), json.load(open(f"{out}/olmoe-trace.json"))
assert ref["ids"] == ours["ids"], "token ids differ"
same = total = 0
for lr, lo in zip(ref["top8"], ours["top8"]):
    for r, o in zip(lr, lo):
        same += len(set(r) & set(o)); total += 8
print(f"gpu-class: olmoe: q4k on the GPU vs transformers float32: {same}/{total} top-8 choices the same ({100*same/total:.1f}%), {len(ref['ids'])} tokens x {len(ref['top8'])} layers")
PY
}

case ${1:-} in
  unpack) unpack "${2:-}" ;;
  instructor) instructor ;;
  student) student ;;
  olmoe) olmoe ;;
  model) make_model ;;
  *) echo "usage: bench/gpu_class.sh unpack PARTS_DIR | instructor | student | model | olmoe" >&2; exit 2 ;;
esac
