"""Routing agreement between our runs, transformers' references and bitsandbytes nf4, plus float32
logit differences and peak GPU memory from the nvidia-smi samples.
usage: python3 bench/compare.py WORK_DIR OUT_DIR

Files in WORK_DIR (each a list over sentences of a list over layers of top-8 lists per token):
ref_bf16 (transformers bf16, default attention), ref_bf16_eager, ref_f32 (float32, eager attention),
ref_gguf_q4km_f32 / _bf16 (transformers on the Q4_K_M file's weights, bench/gguf_reference.py),
route_<name> (ours: none = bf16, none_unfused, none_legacy, none_eager, f32, q8_0, q4k, and
gguf_q4km / gguf_bf16 = llama.cpp's files of the same model; nf4 = transformers + bitsandbytes). ref_f32_logits / logits_f32: router logits, [sentence][layer][row * 64]."""
import json, os, sys
work, out = sys.argv[1], sys.argv[2]
J = lambda n: json.load(open(os.path.join(work, n))) if os.path.exists(os.path.join(work, n)) else None
def stats(a, b):
    rows = same = ov = top1 = 0
    for sa, sb in zip(a, b):
        for la, lb in zip(sa, sb):
            for ra, rb in zip(la, lb):
                rows += 1; c = len(set(ra) & set(rb)); same += c == len(ra); ov += c / len(ra); top1 += ra[0] == rb[0]
    return {"rows": rows, "top8_set_equal": same / max(rows, 1), "mean_top8_overlap": ov / max(rows, 1), "top1_agree": top1 / max(rows, 1)}
res = {}
refs = {k: J(f"ref_{k}.json") for k in ["bf16", "bf16_eager", "f32", "gguf_q4km_f32", "gguf_q4km_bf16"]}
refs = {k: v for k, v in refs.items() if v is not None}
ours = {}
for q in ["none", "none_unfused", "none_legacy", "none_eager", "f32", "q8_0", "q4k", "nf4", "gguf_q4km", "gguf_bf16", "gguf_q4km_f32"]:
    r = J(f"route_{q}.json")
    if r is not None:
        ours[q] = r
        for k, ref in refs.items():
            res[f"{q}_vs_hf_{k}"] = stats(r, ref)
    s = os.path.join(work, f"smi_{q}.txt")
    if os.path.exists(s):
        v = [int(x) for x in open(s).read().split() if x.strip().isdigit()]
        if v: res[f"{q}_smi_peak_MiB"] = max(v); res[f"{q}_smi_base_MiB"] = v[0]
for a, b in [("bf16", "f32"), ("bf16_eager", "f32"), ("bf16", "bf16_eager"), ("gguf_q4km_f32", "f32"), ("gguf_q4km_bf16", "bf16"), ("gguf_q4km_bf16", "gguf_q4km_f32")]:
    if a in refs and b in refs: res[f"hf_{a}_vs_hf_{b}"] = stats(refs[a], refs[b])
for q in ["q8_0", "q4k", "none_legacy", "none_unfused", "gguf_q4km", "gguf_bf16"]:
    if q in ours and "none" in ours: res[f"{q}_vs_ours_bf16"] = stats(ours[q], ours["none"])
la, lb = J("logits_f32.json"), J("ref_f32_logits.json")
if la is not None and lb is not None:
    mx = tot = n = 0.0; per_layer = {}
    for sa, sb in zip(la, lb):
        for li, (x, y) in enumerate(zip(sa, sb)):
            d = [abs(p - q) for p, q in zip(x, y)]
            m = max(d) if d else 0.0
            mx = max(mx, m); tot += sum(d); n += len(d)
            per_layer[li] = max(per_layer.get(li, 0.0), m)
    res["f32_logits_vs_hf_f32"] = {"max_abs_diff": mx, "mean_abs_diff": tot / max(n, 1), "values": int(n),
                                   "max_abs_diff_by_layer": [per_layer[k] for k in sorted(per_layer)]}
print("COMPARE", json.dumps(res, indent=1))
json.dump(res, open(os.path.join(out, "compare.json"), "w"), indent=1)
