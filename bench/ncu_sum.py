"""Per-kernel time of the last repeating run of kernels (one decoder layer of the last forward) in an `ncu --metrics gpu__time_duration.sum --csv` log
of `moe-lens bench --single-only 1` (which runs FORWARDS forward passes after loading).
usage: python3 bench/ncu_sum.py NCU.csv FORWARDS"""
import csv, collections, sys

rows = []
lines = [l for l in open(sys.argv[1]) if l.startswith('"')]
for r in csv.DictReader(lines):
    if r.get("Metric Name") == "gpu__time_duration.sum":
        unit = r.get("Metric Unit", "ns")
        v = float(r["Metric Value"].replace(",", ""))
        v *= {"ns": 1e-3, "us": 1.0, "usecond": 1.0, "nsecond": 1e-3, "ms": 1e3, "msecond": 1e3}.get(unit, 1e-3)
        rows.append((int(r["ID"]), r["Kernel Name"], v))
rows.sort()
fw = int(sys.argv[2])
# the forwards are identical: find the period from the end (the last forward's kernel count)
names = [n for _, n, _ in rows]
n = len(rows)
period = None
for p in range(1, n // fw + 1):
    if names[n - p:] == names[n - 2 * p:n - p] and names[n - 2 * p:n - p] == names[n - 3 * p:n - 2 * p]:
        period = p
        break
if period is None:
    sys.exit(f"no repeating forward found in {n} kernels")
last = rows[n - period:]
agg = collections.defaultdict(lambda: [0, 0.0])
for _, name, us in last:
    short = name.split("(")[0][:90]
    agg[short][0] += 1
    agg[short][1] += us
total = sum(us for _, _, us in last)
print(f"kernels per repeating unit (one decoder layer when the layers are alike): {period}, sum of kernel time: {total:.1f} us")
for name, (c, us) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
    print(f"{us:9.1f} us {100 * us / total:5.1f}% {c:5d}x  {name}")
