"""Routing agreement of our runs with transformers' bf16 reference, plus peak GPU memory from the
nvidia-smi samples. usage: python3 bench/compare.py WORK_DIR OUT_DIR"""
import json, os, sys
work, out = sys.argv[1], sys.argv[2]
ref = json.load(open(os.path.join(work, "ref_bf16.json")))
def stats(a, b):
    rows = same = ov = top1 = 0
    for sa, sb in zip(a, b):
        for la, lb in zip(sa, sb):
            for ra, rb in zip(la, lb):
                rows += 1; c = len(set(ra) & set(rb)); same += c == len(ra); ov += c / len(ra); top1 += ra[0] == rb[0]
    return {"rows": rows, "top8_set_equal": same / max(rows, 1), "mean_top8_overlap": ov / max(rows, 1), "top1_agree": top1 / max(rows, 1)}
res = {}
ours = {}
for q in ["none", "q8_0", "q4k"]:
    p = os.path.join(work, f"route_{q}.json")
    if os.path.exists(p):
        ours[q] = json.load(open(p)); res[f"{q}_vs_hf_bf16"] = stats(ours[q], ref)
    s = os.path.join(work, f"smi_{q}.txt")
    if os.path.exists(s):
        v = [int(x) for x in open(s).read().split() if x.strip().isdigit()]
        if v: res[f"{q}_smi_peak_MiB"] = max(v); res[f"{q}_smi_base_MiB"] = v[0]
for q in ["q8_0", "q4k"]:
    if q in ours and "none" in ours: res[f"{q}_vs_ours_bf16"] = stats(ours[q], ours["none"])
print("COMPARE", json.dumps(res, indent=1))
json.dump(res, open(os.path.join(out, "compare.json"), "w"), indent=1)
