#!/usr/bin/env python3
"""Independent NumPy reference for moe-lens' routing analyses (crates/moe-lens/src/study/analyses.rs).

Not run in CI. It shares no code with moe-lens: it runs `moe-lens trace --format json` on each
sentence of a corpus (the export schema: tokens with id and script, every layer's top_k rows),
and computes from those exports alone:

  - co-activation: per layer an E x E count matrix, [i][j] = tokens whose top-k holds i and j;
  - consecutive tokens per language and layer: pairs of neighbouring tokens of one sentence (both
    counted, counted under the first token's language), top1_same, top1_in_next_top2, mean_shared;
  - token specialisation per layer and expert: picks, distinct token ids, the top token ids (most
    picks first, ties by the smaller id) with share of the expert and of the token, top-1 and
    top-N shares, picks per language;
  - expert profiles per language and layer: experts by picks (ties by the smaller id), cumulative
    share.

Pinned: Python 3.11, numpy==2.2.6 (python3 -m venv v && v/bin/pip install numpy==2.2.6).

    python tests/analyses/reference.py --moe-lens target/debug/moe-lens \
        --model tests/fixtures/olmoe-narrow --corpus tests/analyses/corpus.tsv \
        --out tests/analyses/expected-narrow.json [--by-script] [--skip-common]

The Rust test crates/moe-lens/tests/analyses.rs compares a scan with the committed output:
counts exactly, rates within 1e-9.
"""

import argparse
import csv
import json
import subprocess
import sys

import numpy as np

TOP_TOKENS = 5


def script_lang(script):
    return {"Hangul": "ko", "Hiragana": "ja", "Katakana": "ja", "Han": "ja", "Latin": "en"}.get(
        script, script.lower()
    )


def trace(binary, model, text):
    out = subprocess.run(
        [binary, "trace", "--model", model, "--device", "cpu", "--dtype", "f32", "--format", "json", "--text", text],
        check=True,
        capture_output=True,
    ).stdout
    return json.loads(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moe-lens", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--by-script", action="store_true")
    ap.add_argument("--skip-common", action="store_true")
    a = ap.parse_args()

    with open(a.corpus, encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))

    # per sentence: token ids, positions, languages, top-k array [layers, tokens, k]
    sents = []
    for r in rows:
        ex = trace(a.moe_lens, a.model, r["text"])
        layers = ex["layers"]
        idx = [int(l["name"].split(".")[2]) for l in layers]
        assert idx == list(range(len(layers))), "every layer, in order"
        topk = np.array([l["top_k"] for l in layers], dtype=np.int64)  # [L, T, k]
        keep = [
            t for t, tok in enumerate(ex["tokens"]) if not (a.skip_common and tok["script"] == "Common")
        ]
        langs = [script_lang(ex["tokens"][t]["script"]) if a.by_script else r["lang"] for t in keep]
        ids = [ex["tokens"][t]["id"] for t in keep]
        sents.append({"pos": np.array(keep), "ids": np.array(ids, dtype=np.int64), "langs": langs, "topk": topk[:, keep, :]})
        print(f"{r['id']}: {len(keep)} tokens", file=sys.stderr)

    L, _, k = sents[0]["topk"].shape
    E = int(json.load(open(f"{a.model}/config.json"))["num_experts"])
    all_langs = sorted({l for s in sents for l in s["langs"]})

    # one-hot selections [L, T, E] per sentence
    coact = np.zeros((L, E, E), dtype=np.int64)
    lang_picks = {l: np.zeros((L, E), dtype=np.int64) for l in all_langs}
    consec = {l: np.zeros((L, 4), dtype=np.int64) for l in all_langs}  # pairs, same, in2, shared
    token_picks = {}  # (layer, expert) -> {token id: picks}
    occurrences = {}
    for s in sents:
        T = len(s["ids"])
        onehot = np.zeros((L, T, E), dtype=np.int64)
        for l in range(L):
            for t in range(T):
                onehot[l, t, s["topk"][l, t]] = 1
        coact += np.einsum("lti,ltj->lij", onehot, onehot)
        for t in range(T):
            occurrences[int(s["ids"][t])] = occurrences.get(int(s["ids"][t]), 0) + 1
            lang_picks[s["langs"][t]] += onehot[:, t, :]
            for l in range(L):
                for e in s["topk"][l, t]:
                    d = token_picks.setdefault((l, int(e)), {})
                    d[int(s["ids"][t])] = d.get(int(s["ids"][t]), 0) + 1
        for t in range(T - 1):
            if s["pos"][t + 1] != s["pos"][t] + 1:
                continue
            c = consec[s["langs"][t]]
            for l in range(L):
                a1, b = s["topk"][l, t], s["topk"][l, t + 1]
                c[l, 0] += 1
                c[l, 1] += int(a1[0] == b[0])
                c[l, 2] += int(a1[0] in b[:2])
                c[l, 3] += int((onehot[l, t] * onehot[l, t + 1]).sum())

    out = {
        "model_dir": a.model,
        "by_script": a.by_script,
        "skip_common": a.skip_common,
        "top_tokens": TOP_TOKENS,
        "layers": L,
        "experts": E,
        "k": k,
        "tokens": int(sum(len(s["ids"]) for s in sents)),
        "coactivation": coact.tolist(),
        "random": {"top1_same": 1 / E, "top1_in_next_top2": 2 / E, "mean_shared": k * k / E},
        "consecutive": {},
        "specialisation": [],
        "profiles": {},
    }
    for lang in all_langs:
        c = consec[lang]
        rows_ = []
        for l in range(L):
            p = int(c[l, 0])
            rows_.append(
                {
                    "pairs": p,
                    "top1_same": c[l, 1] / p if p else 0.0,
                    "top1_in_next_top2": c[l, 2] / p if p else 0.0,
                    "mean_shared": c[l, 3] / p if p else 0.0,
                }
            )
        out["consecutive"][lang] = rows_
        prof = []
        for l in range(L):
            row = lang_picks[lang][l]
            order = np.lexsort((np.arange(E), -row))  # picks descending, then id
            total = row.sum()
            prof.append(
                {
                    "experts": order.tolist(),
                    "picks": row[order].tolist(),
                    "cumulative": (np.cumsum(row[order]) / total).tolist() if total else [0.0] * E,
                }
            )
        out["profiles"][lang] = prof
    for l in range(L):
        for e in range(E):
            d = token_picks.get((l, e), {})
            picks = int(coact[l, e, e])
            assert picks == sum(d.values())
            items = sorted(d.items(), key=lambda x: (-x[1], x[0]))
            top = items[:TOP_TOKENS]
            out["specialisation"].append(
                {
                    "layer": l,
                    "expert": e,
                    "picks": picks,
                    "distinct_tokens": len(items),
                    "top": [[t, c, c / picks, c / occurrences[t]] for t, c in top],
                    "top1_share": (items[0][1] / picks) if items else 0.0,
                    "top_n_share": (sum(c for _, c in top) / picks) if picks else 0.0,
                    "langs": {lang: int(lang_picks[lang][l, e]) for lang in all_langs},
                }
            )
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
