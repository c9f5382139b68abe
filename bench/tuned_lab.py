# Copied from ../shared/bench/tuned_lab.py (the project's tuned PyTorch baseline, #17), unchanged below.
"""The Python lab done as a competent PyTorch user would: transformers bf16 (sdpa, grouped_mm experts),
router logits kept on the GPU by the hooks, length-sorted batches of at most BATCH_TOKENS tokens,
per-layer expert counts with bincount on the GPU, warm-up before every timing. Same sentences file
as `moe-lens bench --sents` (a JSON list of token-id lists), same saved model directory.

usage: MODEL=dir SENTS=sents.json OUT=dir python3 ../shared/bench/tuned_lab.py"""
import json, os, statistics, time
import torch
from transformers import AutoModelForCausalLM

M, S, OUT = os.environ["MODEL"], os.environ["SENTS"], os.environ.get("OUT", "/tmp")
BT = int(os.environ.get("BATCH_TOKENS", "4096"))
res = {"gpu": torch.cuda.get_device_name(0), "batch_tokens": BT}
t = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(M, dtype=torch.bfloat16, device_map="cuda", attn_implementation="sdpa")
model.eval(); torch.cuda.synchronize(); res["load_s"] = time.perf_counter() - t
E, K = model.config.num_experts, model.config.num_experts_per_tok
cap = []
def hook(mod, inp, out):
    logits = out[0] if isinstance(out, tuple) else out
    cap.append(logits)
hs = [m.register_forward_hook(hook) for n, m in model.named_modules() if n.endswith("mlp.gate")]
res["hooks"] = len(hs)
sents = json.load(open(S))
order = sorted(range(len(sents)), key=lambda i: len(sents[i]))
batches, cur, longest = [], [], 0
for i in order:
    L = len(sents[i])
    if cur and max(longest, L) * (len(cur) + 1) > BT:
        batches.append(cur); cur, longest = [], 0
    cur.append(i); longest = max(longest, L)
if cur: batches.append(cur)
res["batches"] = len(batches)

@torch.no_grad()
def run_all():
    counts = torch.zeros(len(hs), E, dtype=torch.int64, device="cuda")
    for b in batches:
        L = max(len(sents[i]) for i in b)
        ids = torch.full((len(b), L), 1, dtype=torch.long)
        mask = torch.zeros((len(b), L), dtype=torch.long)
        for r, i in enumerate(b):
            ids[r, :len(sents[i])] = torch.tensor(sents[i]); mask[r, :len(sents[i])] = 1
        ids, mask = ids.cuda(non_blocking=True), mask.cuda(non_blocking=True)
        cap.clear()
        model.model(input_ids=ids, attention_mask=mask)  # no LM head: routing only
        keep = mask.reshape(-1).bool()
        for l, lg in enumerate(cap):
            top = lg.float().softmax(-1).topk(K, -1).indices[keep]
            counts[l] += torch.bincount(top.reshape(-1), minlength=E)
    torch.cuda.synchronize()
    return counts

run_all()  # warm-up
times = []
for _ in range(3):
    torch.cuda.synchronize(); t = time.perf_counter(); c = run_all(); times.append(time.perf_counter() - t)
res["batched_s_all"] = times; res["batched_s_median"] = statistics.median(times)
res["count_total"] = int(c.sum()); res["tokens"] = sum(len(s) for s in sents)

@torch.no_grad()
def one(ids):
    cap.clear(); model.model(input_ids=ids); torch.cuda.synchronize()
ids = torch.tensor([sents[0][:25] + [100] * max(0, 25 - len(sents[0]))], device="cuda")
for _ in range(5): one(ids)
st = []
for _ in range(20):
    t = time.perf_counter(); one(ids); st.append((time.perf_counter() - t) * 1e3)
res["single_ms_median"] = statistics.median(st)
res["peak_mem_GiB"] = torch.cuda.max_memory_allocated() / 2**30
json.dump(res, open(os.path.join(OUT, "tuned_lab.json"), "w"), indent=1)
print("tuned lab", json.dumps(res))
