"""Prints the BENCHMARKS.md tables from one run's JSON files. usage: python3 bench/report.py DIR"""
import json, os, sys
d = sys.argv[1]
J = lambda n: json.load(open(os.path.join(d, n))) if os.path.exists(os.path.join(d, n)) else {}
seed, cmp_, prep = J("seed_baseline.json"), J("compare.json"), J("prep.json")
ours = {q: J(f"ours_{q}.json") for q in ["none", "q8_0", "q4k"]}
hf, nf = seed.get("bf16", {}), seed.get("nf4", {})
f = lambda v, s="{:.2f}": "–" if v is None else s.format(v)
def row(name, py, pn, *vals):
    print(f"| {name} | {py} | {pn} | " + " | ".join(vals) + " |")
print(f"card: {seed.get('gpu', prep.get('gpu'))}; torch {seed.get('torch')}, transformers {seed.get('transformers')}; copy bandwidth {f(seed.get('copy_GBps'), '{:.0f}')} GB/s\n")
print("| | Python lab bf16 | Python lab nf4 | ours bf16 | ours Q8_0 | ours Q4K |\n|---|---|---|---|---|---|")
g = lambda q, k: ours[q].get(k)
row("single-sentence trace (25 tokens), median ms", f(hf.get("single_ms_median")), f(nf.get("single_ms_median")), *[f(g(q, "single_trace_ms_median")) for q in ours])
row("forward only, median ms", "–", "–", *[f(g(q, "single_forward_ms_median")) for q in ours])
row("1,000 sentences one by one, s", f(hf.get("loop1000_s")), f(nf.get("loop1000_s")), *[f(g(q, "loop_s")) for q in ours])
row("1,000 sentences batched, with counting, s", f(hf.get("batch32_1000_s"), "{:.3f}"), f(nf.get("batch32_1000_s"), "{:.3f}"), *[f(g(q, "batched_s"), "{:.3f}") for q in ours])
row("generate 10 tokens, s", f(hf.get("generate10_s"), "{:.3f}"), f(nf.get("generate10_s"), "{:.3f}"), *[f(g(q, "generate10_s"), "{:.3f}") for q in ours])
row("load from local disk, first, s", f(seed.get("bf16_load_s")), f(seed.get("nf4_load_s")), *[f((g(q, "load_first") or {}).get("s")) for q in ours])
row("load again (quantized: from the GGUF cache), s", "–", "–", *[f((g(q, "load_cached") or {}).get("s")) for q in ours])
row("peak GPU memory, GiB", f(hf.get("peak_mem_GiB")) + " (torch allocator)", f(nf.get("peak_mem_GiB")) + " (torch allocator)",
    *[f((cmp_.get(f"{q}_smi_peak_MiB", 0) - cmp_.get(f"{q}_smi_base_MiB", 0)) / 1024 if f"{q}_smi_peak_MiB" in cmp_ else None) + " (nvidia-smi, whole process)" for q in ours])
print()
for k, v in cmp_.items():
    if isinstance(v, dict) and "top8_set_equal" in v:
        print(f"- {k}: {v['rows']} rows, top-8 sets equal {v['top8_set_equal']:.4f}, mean top-8 overlap {v['mean_top8_overlap']:.4f}, top-1 agree {v['top1_agree']:.4f}")
    elif isinstance(v, dict):
        print(f"- {k}: {json.dumps(v)}")
for q in ours:
    for k in ["fused_check", "batched_forward_only_s", "batched_by_batch_tokens", "sweep"]:
        if ours[q].get(k) is not None:
            print(f"\n{q} {k}: {json.dumps(ours[q][k])}")
