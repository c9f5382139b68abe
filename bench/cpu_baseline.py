"""The Python lab's pipeline on the CPU, for the CPU comparison (bench/run_cpu.sh): transformers
5.x in bf16 with the lab's router hooks, on the saved random full-size model (made by
bench/gpu_prep.py), on the same sentences as `moe-lens bench` (sents.json), limited to the threads
given (torch.set_num_threads). Writes OUT/cpu_baseline.json.

  cpu_baseline.py MODEL_DIR SENTS_JSON OUT_JSON [N_SENTENCES] [THREADS]
"""
import json, resource, statistics, sys, time
import torch
import transformers
from transformers import OlmoeForCausalLM

model_dir, sents_path, out = sys.argv[1], sys.argv[2], sys.argv[3]
n = int(sys.argv[4]) if len(sys.argv) > 4 else 20
threads = int(sys.argv[5]) if len(sys.argv) > 5 else 2
torch.set_num_threads(threads)
sents = json.load(open(sents_path))[:n]
res = {"torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
       "sentences": len(sents), "tokens": sum(len(s) for s in sents)}
t = time.perf_counter()
model = OlmoeForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, device_map="cpu")
res["bf16_load_s"] = time.perf_counter() - t
logs = {}
def hook(name):
    def f(module, inputs, outputs):
        val = outputs[0] if isinstance(outputs, tuple) else outputs  # transformers 5.x: (logits, weights, ids)
        logs[name] = val.detach().float()
    return f
for name, m in model.named_modules():
    if name.endswith("mlp.gate"):
        m.register_forward_hook(hook(name))
single = next((s for s in sents if len(s) >= 25), sents[0])[:25]
ids = torch.tensor([single])
with torch.no_grad():
    model(ids)
    ts = []
    for _ in range(5):
        t = time.perf_counter(); model(ids); ts.append(time.perf_counter() - t)
    res["single_trace_ms_median"] = 1000 * statistics.median(ts)
    res["captured_layers"] = len(logs)
    t = time.perf_counter()
    for s in sents:
        logs.clear(); model(torch.tensor([s]))
    res["loop_s"] = time.perf_counter() - t
    res["loop_tok_per_s"] = res["tokens"] / res["loop_s"]
    t = time.perf_counter(); model.generate(ids, max_new_tokens=10, do_sample=False)
    res["generate10_s"] = time.perf_counter() - t
res["peak_rss_GiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
json.dump(res, open(out, "w"), indent=1)
print("cpu_baseline", json.dumps(res), flush=True)
