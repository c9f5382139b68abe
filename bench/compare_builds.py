"""Routing of two builds of moe-lens on the same card, path by path (bench/a30_check.sh).
usage: python3 bench/compare_builds.py WORK_DIR OUT_JSON

WORK_DIR holds route_<build>_<path>.json (a list over sentences of a list over layers of top-k
lists per token, from `moe-lens bench --routing-out`) and logits_<build>_<path>.json (router
logits, [sentence][layer][row * E], from --logits-out). For every path run by both builds: the
share of rows whose top-k sets are equal, the mean overlap, top-1 agreement and the largest router
logit difference; and every run against the first build's bf16 run (the issue's table)."""
import json, os, re, sys

work, out = sys.argv[1], sys.argv[2]
runs = {}
for f in sorted(os.listdir(work)):
    m = re.fullmatch(r"route_(\d+)_(.+)\.json", f)
    if m:
        runs[(m.group(1), m.group(2))] = f


def load(name):
    p = os.path.join(work, name)
    return json.load(open(p)) if os.path.exists(p) else None


def stats(a, b, layers_from=0):
    rows = same = ov = top1 = 0
    for sa, sb in zip(a, b):
        for li, (la, lb) in enumerate(zip(sa, sb)):
            if li < layers_from:
                continue
            for ra, rb in zip(la, lb):
                rows += 1
                c = len(set(ra) & set(rb))
                same += c == len(ra)
                ov += c
                top1 += ra[0] == rb[0]
    return {"rows": rows, "top_k_set_equal": same / max(rows, 1), "mean_overlap": ov / max(rows, 1), "top1_agree": top1 / max(rows, 1)}


def max_logit_diff(a, b):
    if a is None or b is None:
        return None
    mx = 0.0
    for sa, sb in zip(a, b):
        for x, y in zip(sa, sb):
            for p, q in zip(x, y):
                mx = max(mx, abs(p - q))
    return mx


builds = sorted({b for b, _ in runs}, reverse=True)  # "90" first
# the last entry of each dump is a greedy generation (bench --gen-routing): compared on its own
SPLIT = os.environ.get("SPLIT_LAST", "1") == "1"


def parts(x):
    if x is None or not SPLIT:
        return {"all": x}
    return {"traces": x[:-1], "generation": x[-1:]}

paths = sorted({p for _, p in runs})
res = {"builds": builds, "paths": paths, "between_builds": {}, "vs_reference": {}}
if builds:
    ref_key = (builds[0], "bf16")
    ref = load(runs[ref_key]) if ref_key in runs else None
    for p in paths:
        pair = [(b, p) for b in builds if (b, p) in runs]
        if len(pair) == 2:
            a, b = parts(load(runs[pair[0]])), parts(load(runs[pair[1]]))
            la, lb = parts(load(f"logits_{pair[0][0]}_{p}.json")), parts(load(f"logits_{pair[1][0]}_{p}.json"))
            for part in a:
                s = stats(a[part], b[part])
                s["max_abs_logit_diff"] = max_logit_diff(la.get(part), lb.get(part))
                res["between_builds"][f"{p} {part}"] = s
        for b in builds:
            if (b, p) in runs and ref is not None:
                first = lambda x: parts(x)["traces"] if SPLIT and x is not None else x
                s = stats(first(load(runs[(b, p)])), first(ref), layers_from=1)
                s["max_abs_logit_diff"] = max_logit_diff(first(load(f"logits_{b}_{p}.json")), first(load(f"logits_{ref_key[0]}_bf16.json")))
                res["vs_reference"][f"{b}_{p}"] = s
print(f"{'path, part':32s} {'sm_' + builds[0] if builds else '':>10s} vs {'sm_' + builds[-1] if builds else '':<8s} set-equal  overlap  top1   max|dlogit|")
for p, s in res["between_builds"].items():
    d = s["max_abs_logit_diff"]
    print(f"{p:32s} {s['rows']:>8d} rows        {s['top_k_set_equal']:.4f}   {s['mean_overlap']:.3f}   {s['top1_agree']:.4f} {d if d is None else f'{d:.2e}'}")
print(f"\nagainst build {builds[0] if builds else '?'}'s bf16, layers 1..:")
for k, s in res["vs_reference"].items():
    d = s["max_abs_logit_diff"]
    print(f"{k:26s} set-equal {s['top_k_set_equal']:.4f}  overlap {s['mean_overlap']:.3f}  max|dlogit| {d if d is None else f'{d:.3f}'}")
json.dump(res, open(out, "w"), indent=1)
