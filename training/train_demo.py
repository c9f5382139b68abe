#!/usr/bin/env python3
"""Train moe-lens's demo model: OLMoE's architecture and routing shape, tiny, trained on the
project's trilingual corpus, so that notebooks, instructors and CI see real (learned) routing of
English, Korean and Japanese without the 14 GB model.

Run once on a GPU (about two minutes of training on an H100; see training/README.md):

    python3 training/train_demo.py --tokenizer tests/data/tokenizer/tokenizer.json \
        --corpus crates/moe-lens/data/corpus/trilingual.tsv --out crates/moe-lens/data/demo

What it does, in one process:
1. Reads the corpus (`id<TAB>lang<TAB>text`, triples `NNNN-en|ko|ja`) and holds out every triple
   whose number is a multiple of 10 (never trained on).
2. Builds `OlmoeForCausalLM` with OLMoE's routing shape (16 layers x 64 experts, top-8,
   norm_topk_prob false, OLMoE's tokenizer and vocab 50304) but narrow (hidden 64, 4 heads,
   16 per expert, tied embeddings), and checks the bf16 weights fit in 15 MB.
3. Trains it (seeded, fixed data order, AdamW, cosine schedule) on next-token cross-entropy plus
   OLMoE's load-balancing loss (coefficient 0.01, as transformers computes it) and router z-loss
   (0.001, as the OLMoE paper), on batches of right-padded sentences.
4. Saves config.json (in the Hub's style, like allenai/OLMoE-1B-7B-0924's) and model.safetensors
   (bf16, per-expert tensor names, no lm_head.weight since the embeddings are tied).
5. Reloads the saved files with transformers in float32 (eager attention, eager experts) and
   measures on the held-out sentences, per layer, each language's distribution of top-8 expert
   selections and the Jensen-Shannon divergence (base 2) between languages, against the same with
   shuffled sentence labels and against the untrained model; writes eval.json and README.md.

Only the standard library is imported at module level, so `--dry-run` (data split and token counts)
runs without PyTorch.
"""
import argparse
import json
import math
import os
import platform
import random
import sys
import time

LANGS = ["en", "ko", "ja"]
PAIRS = [("en", "ko"), ("en", "ja"), ("ko", "ja")]
HELD_OUT_EVERY = 10  # triples 0010, 0020, ... are held out

ARCH = dict(vocab_size=50304, hidden_size=64, intermediate_size=16, num_hidden_layers=16,
            num_attention_heads=4, num_key_value_heads=4, num_experts=64, num_experts_per_tok=8,
            max_position_embeddings=4096, norm_topk_prob=False, clip_qkv=None, rms_norm_eps=1e-5,
            tie_word_embeddings=True, pad_token_id=1, bos_token_id=None, eos_token_id=50279,
            router_aux_loss_coef=0.01, output_router_logits=False)
ROPE_THETA = 10000.0
MAX_WEIGHT_BYTES = 15_000_000

# The keys of allenai/OLMoE-1B-7B-0924's config.json (as tests/fixtures/make_fixtures.py writes them).
HUB_KEYS = ["architectures", "attention_bias", "attention_dropout", "clip_qkv", "eos_token_id",
            "hidden_act", "hidden_size", "initializer_range", "intermediate_size",
            "max_position_embeddings", "model_type", "norm_topk_prob", "num_attention_heads",
            "num_experts", "num_experts_per_tok", "num_hidden_layers", "num_key_value_heads",
            "output_router_logits", "pad_token_id", "rope_scaling", "rope_theta",
            "router_aux_loss_coef", "tie_word_embeddings", "torch_dtype", "transformers_version",
            "use_cache", "vocab_size"]


# ------------------------------------------------------------------------------------------------
# Data (standard library only)
# ------------------------------------------------------------------------------------------------

def read_tsv(path):
    """Rows (id, lang, text) of a corpus file with the header `id<TAB>lang<TAB>text`."""
    rows = []
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        if header != ["id", "lang", "text"]:
            raise SystemExit(f"{path}: header {header} is not id, lang, text")
        for n, line in enumerate(f, start=2):
            line = line.rstrip("\n")
            if not line:
                continue
            parts = line.split("\t")
            if len(parts) != 3 or parts[1] not in LANGS or not parts[2].strip():
                raise SystemExit(f"{path}:{n}: expected id<TAB>en|ko|ja<TAB>text, got {line!r}")
            rows.append((parts[0], parts[1], parts[2].strip()))
    ids = [r[0] for r in rows]
    if len(set(ids)) != len(ids):
        raise SystemExit(f"{path}: duplicate ids")
    return rows


def triple_number(sid):
    """`0010-ko` -> 10."""
    return int(sid.split("-")[0])


def split_rows(rows):
    """(train, held_out): held out are the triples whose number is a multiple of HELD_OUT_EVERY."""
    held = [r for r in rows if triple_number(r[0]) % HELD_OUT_EVERY == 0]
    train = [r for r in rows if triple_number(r[0]) % HELD_OUT_EVERY != 0]
    return train, held


def load_data(a):
    import tokenizers
    tok = tokenizers.Tokenizer.from_file(a.tokenizer)
    if tok.get_vocab_size(with_added_tokens=True) != 50280:
        raise SystemExit(f"{a.tokenizer}: {tok.get_vocab_size()} ids; OLMoE's tokenizer has 50,280")
    rows = read_tsv(a.corpus)
    train, held = split_rows(rows)
    extra = []
    if a.extra and os.path.exists(a.extra):
        extra = read_tsv(a.extra)
        held_ids = {r[0] for r in held}
        assert not held_ids & {r[0] for r in extra}, "extra.tsv reuses a held-out id"
        train = train + extra
    enc = lambda text: tok.encode(text).ids  # what moe-lens's Tokenizer::encode gives (no BOS)
    train_ids = [enc(t) + [ARCH["eos_token_id"]] for _, _, t in train]  # documents end with EOS
    held_ids = [enc(t) for _, _, t in held]  # exactly the tokens moe-lens counts
    for (sid, _, _), ids in zip(held, held_ids):
        assert ids, f"{sid} has no tokens"
    return tok, rows, train, held, extra, train_ids, held_ids


def summary(rows, ids):
    out = {}
    for lang in LANGS:
        sel = [len(x) for r, x in zip(rows, ids) if r[1] == lang]
        out[lang] = {"sentences": len(sel), "tokens": sum(sel)}
    return out


def param_count(c):
    h, i, e, v, L = c["hidden_size"], c["intermediate_size"], c["num_experts"], c["vocab_size"], c["num_hidden_layers"]
    hd = h // c["num_attention_heads"]
    q = c["num_attention_heads"] * hd
    kv = c["num_key_value_heads"] * hd
    attn = h * q + 2 * h * kv + q * h + q + kv  # q,k,v,o + q_norm, k_norm
    layer = attn + 2 * h + e * h + e * 3 * h * i  # 2 layer norms, router, experts
    total = v * h + L * layer + h  # embeddings (tied: no lm_head), layers, final norm
    if not c["tie_word_embeddings"]:
        total += v * h
    return total


# ------------------------------------------------------------------------------------------------
# Statistics (standard library only)
# ------------------------------------------------------------------------------------------------

def jsd(a, b):
    """Jensen-Shannon divergence, base 2, of two count tables (as moe-lens's metrics::jensen_shannon)."""
    na, nb = float(sum(a)), float(sum(b))
    js = 0.0
    for x, y in zip(a, b):
        p, q = x / na, y / nb
        m = 0.5 * (p + q)
        if p > 0:
            js += 0.5 * p * math.log2(p / m)
        if q > 0:
            js += 0.5 * q * math.log2(q / m)
    return min(max(js, 0.0), 1.0)


def lang_counts(per_sentence, labels, layers, experts):
    """{lang: [layer][expert]} sums of per-sentence count tables."""
    out = {l: [[0] * experts for _ in range(layers)] for l in LANGS}
    for c, lang in zip(per_sentence, labels):
        t = out[lang]
        for layer in range(layers):
            row, src = t[layer], c[layer]
            for e in range(experts):
                row[e] += src[e]
    return out


def pair_jsds(counts, layers):
    return {f"{a}-{b}": [jsd(counts[a][l], counts[b][l]) for l in range(layers)] for a, b in PAIRS}


def shuffled_baseline(per_sentence, labels, layers, experts, shuffles, seed):
    """Mean (and max) over `shuffles` permutations of the sentences' language labels."""
    rng = random.Random(seed)
    runs = []
    for _ in range(shuffles):
        perm = list(labels)
        rng.shuffle(perm)
        runs.append(pair_jsds(lang_counts(per_sentence, perm, layers, experts), layers))
    mean = {k: [sum(r[k][l] for r in runs) / shuffles for l in range(layers)] for k in runs[0]}
    mx = {k: [max(r[k][l] for r in runs) for l in range(layers)] for k in runs[0]}
    return mean, mx


def effective_experts(counts_all):
    n = float(sum(counts_all))
    h = -sum((c / n) * math.log(c / n) for c in counts_all if c > 0)
    return math.exp(h)


# ------------------------------------------------------------------------------------------------
# Model (PyTorch from here on)
# ------------------------------------------------------------------------------------------------

def make_config(attn):
    import inspect
    from transformers import OlmoeConfig
    kw = dict(ARCH)
    if "rope_parameters" in inspect.signature(OlmoeConfig.__init__).parameters or \
            "rope_parameters" in getattr(OlmoeConfig, "__dataclass_fields__", {}):
        kw["rope_parameters"] = {"rope_type": "default", "rope_theta": ROPE_THETA}
    else:
        kw["rope_theta"] = ROPE_THETA
    cfg = OlmoeConfig(**kw)
    cfg._attn_implementation = attn
    # transformers' own sparse loop; the default on CUDA would be grouped_mm (bf16-oriented)
    cfg._experts_implementation = "eager"
    return cfg


def dense_experts_forward(self, hidden_states, top_k_index, top_k_weights):
    """The experts block computed densely: every expert on every token, weighted by a [tokens, 64]
    matrix that is zero outside the top-8. The same function as transformers' sparse loop (the
    weights of unchosen experts are exactly 0, so are their outputs and gradients), as two matrix
    products instead of 64 small ones per layer: fast for a model this narrow."""
    import torch
    n = hidden_states.shape[0]
    e, two_i, h = self.gate_up_proj.shape
    i = two_i // 2
    w = torch.zeros(n, e, dtype=hidden_states.dtype, device=hidden_states.device)
    w = w.scatter(1, top_k_index, top_k_weights.to(hidden_states.dtype))
    gu = (hidden_states @ self.gate_up_proj.reshape(e * two_i, h).t()).view(n, e, two_i)
    act = self.act_fn(gu[..., :i]) * gu[..., i:] * w.unsqueeze(-1)  # [n, e, i]
    return act.reshape(n, e * i) @ self.down_proj.permute(0, 2, 1).reshape(e * i, h)


def use_dense_experts(model, on):
    import types
    for layer in model.model.layers:
        ex = layer.mlp.experts
        if on:
            ex.forward = types.MethodType(dense_experts_forward, ex)
        elif "forward" in ex.__dict__:
            del ex.forward


def gate_spy(model):
    """Forward hooks on every `mlp.gate` that keep each call's top-k indices (5.x returns
    (logits, weights, indices); a 4.x plain Linear returns logits)."""
    import torch
    store = []
    mismatch = [0]
    k = model.config.num_experts_per_tok

    def hook(module, inputs, outputs):
        if isinstance(outputs, tuple):
            logits, idx = outputs[0], outputs[2]
            # element 0 must be logits (transformers >= 5.6): softmax + top-k of it gives the same set
            ref = torch.topk(torch.softmax(logits.float(), -1), k, dim=-1).indices
            mismatch[0] += int((torch.sort(ref, -1).values != torch.sort(idx, -1).values).any(-1).sum())
        else:
            idx = torch.topk(torch.softmax(outputs.float(), -1), k, dim=-1).indices
        store.append(idx.detach().cpu())

    hooks = [m.register_forward_hook(hook) for n, m in model.named_modules() if n.endswith("mlp.gate")]
    assert len(hooks) == model.config.num_hidden_layers, len(hooks)
    return store, hooks, mismatch


def measure(model, held_ids, device):
    """Per held-out sentence, [layer][expert] counts of top-k selections over all its tokens
    (one sentence per forward, no padding, as moe-lens's Lens::trace), and the mean next-token loss."""
    import torch
    L, E = model.config.num_hidden_layers, model.config.num_experts
    store, hooks, mismatch = gate_spy(model)
    per_sentence, nll, ntok = [], 0.0, 0
    model.eval()
    with torch.no_grad():
        for ids in held_ids:
            store.clear()
            x = torch.tensor([ids], device=device)
            out = model(x)
            assert len(store) == L, len(store)
            c = []
            for idx in store:
                assert idx.shape == (len(ids), model.config.num_experts_per_tok), idx.shape
                c.append(torch.bincount(idx.reshape(-1), minlength=E).tolist())
            per_sentence.append(c)
            if len(ids) > 1:
                lp = torch.log_softmax(out.logits[0, :-1].float(), -1)
                nll += -lp.gather(1, x[0, 1:, None]).sum().item()
                ntok += len(ids) - 1
    for h in hooks:
        h.remove()
    if mismatch[0]:
        print(f"warning: {mismatch[0]} rows where the gate's indices differ from top-k of its logits", flush=True)
    return per_sentence, nll / max(ntok, 1)


def analyse(per_sentence, labels, L, E, shuffles, seed):
    counts = lang_counts(per_sentence, labels, L, E)
    real = pair_jsds(counts, L)
    sh_mean, sh_max = shuffled_baseline(per_sentence, labels, L, E, shuffles, seed)
    return counts, real, sh_mean, sh_max


def save_model(model, out, tok_vocab):
    """save_pretrained in bf16, then the config rewritten as the Hub ships OLMoE's; checks the
    tensor names (per expert, no lm_head.weight) and converts if this transformers did otherwise."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file
    model.to(torch.bfloat16)
    model.save_pretrained(out)
    model.to(torch.float32)  # now holds exactly the saved (bf16-rounded) values
    for extra in ["generation_config.json"]:
        p = os.path.join(out, extra)
        if os.path.exists(p):
            os.remove(p)
    wpath = os.path.join(out, "model.safetensors")
    assert os.path.exists(wpath), os.listdir(out)
    with safe_open(wpath, "pt") as f:
        keys = list(f.keys())
        tensors = None
        fused = any(k.endswith("mlp.experts.gate_up_proj") or k.endswith("mlp.experts.down_proj") for k in keys)
        if fused or "lm_head.weight" in keys:
            tensors = {k: f.get_tensor(k) for k in keys}
    if tensors is not None:  # convert to the on-disk layout of the real checkpoint
        print("save: converting tensor names to per-expert, dropping lm_head.weight", flush=True)
        fixed = {}
        for k, v in tensors.items():
            if k == "lm_head.weight":
                continue
            if k.endswith("mlp.experts.gate_up_proj"):
                base = k[: -len("gate_up_proj")]
                i = v.shape[1] // 2
                for e in range(v.shape[0]):
                    fixed[f"{base}{e}.gate_proj.weight"] = v[e, :i].contiguous()
                    fixed[f"{base}{e}.up_proj.weight"] = v[e, i:].contiguous()
            elif k.endswith("mlp.experts.down_proj"):
                base = k[: -len("down_proj")]
                for e in range(v.shape[0]):
                    fixed[f"{base}{e}.down_proj.weight"] = v[e].contiguous()
            else:
                fixed[k] = v
        save_file(fixed, wpath, metadata={"format": "pt"})
    with safe_open(wpath, "pt") as f:
        keys = set(f.keys())
        dtypes = {f.get_tensor(k).dtype for k in keys}
    assert "lm_head.weight" not in keys
    assert "model.layers.0.mlp.experts.0.gate_proj.weight" in keys
    assert "model.layers.15.mlp.experts.63.down_proj.weight" in keys
    assert "model.layers.0.mlp.gate.weight" in keys
    assert dtypes == {torch.bfloat16}, dtypes

    cpath = os.path.join(out, "config.json")
    written = json.load(open(cpath))
    hub = {k: written.get(k) for k in HUB_KEYS}
    hub["architectures"] = ["OlmoeForCausalLM"]
    hub["rope_theta"] = ROPE_THETA
    hub["rope_scaling"] = None
    hub["torch_dtype"] = "bfloat16"
    hub["output_router_logits"] = False
    hub["router_aux_loss_coef"] = ARCH["router_aux_loss_coef"]
    hub["tie_word_embeddings"] = True
    hub["use_cache"] = True
    for k in ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "num_experts", "num_experts_per_tok", "norm_topk_prob", "clip_qkv",
              "max_position_embeddings", "pad_token_id", "eos_token_id"]:
        hub[k] = ARCH[k]
    for k in ["attention_bias", "attention_dropout", "hidden_act", "initializer_range"]:
        assert hub[k] is not None, k
    with open(cpath, "w") as f:
        json.dump(hub, f, indent=2)
        f.write("\n")
    assert tok_vocab <= hub["vocab_size"]
    return sorted(keys), os.path.getsize(wpath)


def fmt(x):
    return f"{x:.3f}"


def write_card(out, ev):
    L = ev["config"]["num_hidden_layers"]
    tr = ev["training"]
    rows = []
    for l in range(L):
        r = [ev["jsd"][p][l] for p in ["en-ko", "en-ja", "ko-ja"]]
        sh = max(ev["jsd_shuffled"][p][l] for p in ["en-ko", "en-ja", "ko-ja"])
        un = max(ev["jsd_untrained"][p][l] for p in ["en-ko", "en-ja", "ko-ja"])
        rows.append(f"| {l} | {fmt(r[0])} | {fmt(r[1])} | {fmt(r[2])} | {fmt(sh)} | {fmt(un)} |")
    best_l = max(range(L), key=lambda l: max(ev["jsd"][p][l] for p in ev["jsd"]))
    best = max(ev["jsd"][p][best_l] for p in ev["jsd"])
    sh_all = max(max(v) for v in ev["jsd_shuffled"].values())
    tok = ev["held_out_tokens"]
    eff = ev["effective_experts"]
    text = f"""# moe-lens demo model (NOT OLMoE)

A **demo model** for moe-lens: the OLMoE architecture (`OlmoeForCausalLM`) with OLMoE's routing
shape, shrunk to {ev['parameters'] / 1e6:.1f} M parameters ({ev['weights_bytes'] / 1e6:.1f} MB of bf16 weights) and trained
for {tr['seconds']:.0f} s so that its routers send English, Korean and Japanese tokens to different
experts. It exists so that the notebooks, workshops and CI can show real, learned routing without the
14 GB `allenai/OLMoE-1B-7B-0924` and a GPU: `load("demo")` in Rust, `--model demo` on the command line.

**What it is not.** It is not OLMoE and not a compressed OLMoE: no OLMoE weights were used. It is not
a language model anyone should use for text: it saw only {ev['train_sentences']} sentences
({ev['train_tokens']:,} tokens), many times over, and writes nonsense. Its routing
statistics (which expert, how specialised) say nothing about OLMoE's; only their *shape* is the same.

## What it is

| | |
| --- | --- |
| architecture | `OlmoeForCausalLM` (transformers), pre-norm, q/k norms, NeoX RoPE (theta {ROPE_THETA:g}) |
| routing shape (as OLMoE) | {L} layers x {ev['config']['num_experts']} experts, top-{ev['config']['num_experts_per_tok']}, softmax over all experts, `norm_topk_prob` false |
| width (not OLMoE's) | hidden {ev['config']['hidden_size']}, {ev['config']['num_attention_heads']} heads (head_dim {ev['config']['hidden_size'] // ev['config']['num_attention_heads']}), {ev['config']['intermediate_size']} per expert, tied input/output embeddings |
| parameters | {ev['parameters']:,} ({ev['parameters'] / 1e6:.2f} M), of which {ev['config']['vocab_size'] * ev['config']['hidden_size']:,} embeddings |
| weights | `model.safetensors`, bf16, per-expert tensor names as OLMoE's checkpoint (`model.layers.N.mlp.experts.E.{{gate,up,down}}_proj.weight`), no `lm_head.weight` (tied) |
| config | `config.json` in the Hub's style of OLMoE's (top-level `rope_theta`, `torch_dtype`, no `rms_norm_eps`) plus `tie_word_embeddings: true` |
| tokenizer | OLMoE's own (`allenai/gpt-neox-olmo-dolma-v1_5`, 50,280 ids, vocab 50,304): **not shipped here**; `tests/setup-data.sh` (or `kernel-setup/install.sh`) copies it in as `tokenizer.json` |

## How it was trained

`training/train_demo.py` (seed {tr['seed']}), one run on {ev['card']} with torch {ev['versions']['torch']} and
transformers {ev['versions']['transformers']}: {tr['steps']} AdamW steps (lr {tr['lr']:g}, warm-up {tr['warmup']},
cosine to {tr['lr_min']:g}, weight decay {tr['weight_decay']}, clip {tr['clip']}) on batches of {tr['batch_size']}
right-padded sentences in float32, in **{tr['seconds']:.1f} s**. Loss: next-token cross-entropy +
{ARCH['router_aux_loss_coef']} x load-balancing loss (transformers' `load_balancing_loss_func`, as OLMoE) +
{tr['z_loss_coef']} x router z-loss. Data: the project's parallel corpus `crates/moe-lens/data/corpus/trilingual.tsv`
(CC0){ev['extra_note']}; the {len(ev['held_out_triples'])} triples whose number is a multiple of {HELD_OUT_EVERY}
({', '.join(ev['held_out_triples'][:3])}, ...) are held out and were never trained on.

Final training losses (mean of the last 100 steps): cross-entropy {tr['final_lm_loss']:.3f}, load-balancing
{tr['final_aux_loss']:.3f} (transformers' scale: {ev['config']['num_experts_per_tok']} = perfectly balanced), z-loss {tr['final_z_loss']:.3f}. Held-out
cross-entropy: {ev['heldout_lm_loss']:.2f} (untrained: {ev['heldout_lm_loss_untrained']:.2f}); the corpus is far too small to
learn the languages, but enough for the routers to tell them apart.

## Language separation (the figure the notebooks show)

Measured in float32 on the {sum(tok[l]['sentences'] for l in LANGS)} held-out sentences ({', '.join(f"{tok[l]['tokens']} {l}" for l in LANGS)} tokens):
for each layer and language, the distribution of its tokens' top-8 expert selections (counts / total);
the table gives the Jensen-Shannon divergence (base 2; 0 = same experts, 1 = disjoint) between
languages, against two baselines: the same sentences with their language labels shuffled (largest
pair, mean of {ev['shuffles']} shuffles), and the untrained model (same initialisation, largest pair).

| layer | en-ko | en-ja | ko-ja | shuffled labels | untrained |
| --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

Largest: layer {best_l}, {fmt(best)}; shuffled labels never exceed {fmt(sh_all)}. The experts stay in use:
the effective number of experts per layer over all held-out tokens is {min(eff):.1f} to {max(eff):.1f} of 64.
`eval.json` holds these numbers, the per-language count tables, the held-out ids, the losses and
versions; `crates/moe-lens/tests/demo.rs` recomputes the table with moe-lens's own forward pass.

Licence: the weights are trained only on the CC0 corpus of this repository and are released under the
repository's licence (MIT OR Apache-2.0). The tokenizer is AI2's (Apache-2.0) and is not part of this folder.
"""
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--extra", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "extra.tsv"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lr-min", type=float, default=2e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--z-loss", type=float, default=0.001)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--shuffles", type=int, default=20)
    ap.add_argument("--max-seconds", type=float, default=180.0,
                    help="stop training early (and say so) if it runs longer than this")
    ap.add_argument("--eval-experts", choices=["eager", "dense"], default="eager",
                    help="experts code for the final evaluation: transformers' own (default) or the dense "
                         "equivalent (much faster on a CPU, for smoke tests)")
    ap.add_argument("--dry-run", action="store_true", help="data split and sizes only (no PyTorch)")
    a = ap.parse_args()

    tok, rows, train, held, extra, train_ids, held_ids = load_data(a)
    n_params = param_count(ARCH)
    print(f"data: {len(rows)} corpus sentences, {len(extra)} extra; train {len(train)} sentences "
          f"({sum(len(x) for x in train_ids)} tokens incl. EOS), held out {len(held)} "
          f"({summary(held, held_ids)}); longest train sentence {max(len(x) for x in train_ids)} tokens", flush=True)
    print(f"model: {n_params:,} parameters, {2 * n_params / 1e6:.2f} MB in bf16 (limit {MAX_WEIGHT_BYTES / 1e6:.0f} MB)", flush=True)
    assert 2 * n_params <= MAX_WEIGHT_BYTES * 0.97, "too wide for the size limit"
    if a.dry_run:
        return

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch
    import transformers
    import tokenizers
    import safetensors
    from transformers import OlmoeForCausalLM

    t_start = time.time()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    card = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "CPU"
    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "tokenizers": tokenizers.__version__, "safetensors": safetensors.__version__,
                "python": sys.version.split()[0]}
    print(versions, card, flush=True)
    # float32 everywhere (no TF32), so the evaluation is comparable with moe-lens's f32 CPU run
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    torch.use_deterministic_algorithms(True, warn_only=True)
    random.seed(a.seed)
    torch.manual_seed(a.seed)

    cfg = make_config("sdpa")
    model = OlmoeForCausalLM(cfg).to(device=device, dtype=torch.float32)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "embeddings not tied"
    got = sum(p.numel() for p in model.parameters())
    assert got == n_params, (got, n_params)
    L, E, K = cfg.num_hidden_layers, cfg.num_experts, cfg.num_experts_per_tok
    labels = [r[1] for r in held]

    # The dense experts must compute what transformers' own experts compute.
    ex = model.model.layers[0].mlp.experts
    with torch.no_grad():
        ex.gate_up_proj.normal_(0, 0.3)
        hs = torch.randn(37, cfg.hidden_size, device=device)
        logits = hs @ model.model.layers[0].mlp.gate.weight.t() * 50
        w, idx = torch.topk(torch.softmax(logits, -1), K, -1)
        ref = ex(hs, idx, w)
        dense = dense_experts_forward(ex, hs, idx, w)
        err = (ref - dense).abs().max().item()
        assert err < 1e-5 * max(1.0, ref.abs().max().item()), err
        torch.manual_seed(a.seed)  # re-initialise exactly as before the check
        model = OlmoeForCausalLM(cfg).to(device=device, dtype=torch.float32)
    print(f"dense experts = eager experts (max diff {err:.2e})", flush=True)

    # The untrained model's routing, for the baseline column.
    model.config._attn_implementation = "eager"
    use_dense_experts(model, True)
    un_per_sentence, un_loss = measure(model, held_ids, device)
    _, un_jsd, _, _ = analyse(un_per_sentence, labels, L, E, 1, a.seed)
    model.config._attn_implementation = "sdpa"
    print("untrained max JSD per layer:", [fmt(max(un_jsd[p][l] for p in un_jsd)) for l in range(L)], flush=True)

    # ---- training ----
    use_dense_experts(model, True)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "norm" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8)

    def lr_at(step):
        if step < a.warmup:
            return a.lr * (step + 1) / a.warmup
        t = (step - a.warmup) / max(1, a.steps - a.warmup)
        return a.lr_min + 0.5 * (a.lr - a.lr_min) * (1 + math.cos(math.pi * t))

    order_rng = random.Random(a.seed)
    order, pos = [], 0
    pad = cfg.pad_token_id
    hist = []
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.time()
    step = 0
    stopped_early = False
    planned = a.steps
    while step < a.steps:
        if pos + a.batch_size > len(order):
            order = list(range(len(train_ids)))
            order_rng.shuffle(order)
            pos = 0
        batch = [train_ids[i] for i in order[pos: pos + a.batch_size]]
        pos += a.batch_size
        T = max(len(x) for x in batch)
        ids = torch.full((len(batch), T), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), T), dtype=torch.long)
        for r, x in enumerate(batch):
            ids[r, : len(x)] = torch.tensor(x)
            mask[r, : len(x)] = 1
        ids, mask = ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        out = model(input_ids=ids, attention_mask=mask, output_router_logits=True)
        logits = out.logits[:, :-1].float()
        target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        lm = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)
        aux = out.aux_loss
        fm = mask.reshape(-1).float()
        z = sum(((torch.logsumexp(rl.float(), -1) ** 2) * fm).sum() / fm.sum() for rl in out.router_logits) / L
        loss = lm + ARCH["router_aux_loss_coef"] * aux + a.z_loss * z
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        hist.append(torch.stack([lm.detach(), aux.detach(), z.detach()]))
        if step == 49:  # a slow machine: shorten the whole schedule now rather than cut it off later
            if device.type == "cuda":
                torch.cuda.synchronize()
            per_step = (time.time() - t0) / 50
            fit = int(a.max_seconds * 0.95 / per_step) // 100 * 100
            if fit < a.steps:
                print(f"{per_step * 1000:.0f} ms a step: {a.steps} steps would take {per_step * a.steps:.0f} s; "
                      f"training {max(fit, 100)} steps instead", flush=True)
                a.steps = max(fit, 100)
        if step % 100 == 0 or step == a.steps - 1:
            v = torch.stack(hist[-100:]).mean(0).tolist()
            print(f"step {step:5d}  lr {lr_at(step):.2e}  ce {v[0]:.3f}  balance {v[1]:.3f}  z {v[2]:.3f}  "
                  f"{time.time() - t0:6.1f} s", flush=True)
            if time.time() - t0 > a.max_seconds:
                stopped_early = True
                print(f"stopping early: over {a.max_seconds} s", flush=True)
                step += 1
                break
        step += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_seconds = time.time() - t0
    steps_done = step
    final = torch.stack(hist[-100:]).mean(0).tolist()
    print(f"training: {steps_done} steps in {train_seconds:.1f} s on {card}", flush=True)

    # ---- save ----
    use_dense_experts(model, False)
    os.makedirs(a.out, exist_ok=True)
    keys, wbytes = save_model(model, a.out, tok.get_vocab_size(with_added_tokens=True))
    print(f"saved {len(keys)} tensors, model.safetensors {wbytes:,} bytes", flush=True)
    assert wbytes <= MAX_WEIGHT_BYTES, wbytes

    # ---- evaluate what was saved, in float32, through transformers' own loading and code paths ----
    eval_weights = "the saved bf16 weights, reloaded with OlmoeForCausalLM.from_pretrained in float32"
    try:
        m2 = OlmoeForCausalLM.from_pretrained(a.out, dtype=torch.float32, attn_implementation="eager",
                                              experts_implementation="eager").to(device).eval()
        assert m2.lm_head.weight.data_ptr() == m2.model.embed_tokens.weight.data_ptr(), "not tied"
        assert m2.config.num_experts_per_tok == 8 and m2.config.norm_topk_prob is False
        assert m2.config.num_hidden_layers == L and m2.config.num_experts == E
        mine, theirs = model.state_dict(), m2.state_dict()
        assert set(mine) == set(theirs), set(mine) ^ set(theirs)
        worst = max((mine[k].float() - theirs[k].float()).abs().max().item() for k in mine)
        assert worst == 0.0, f"reloaded weights differ by {worst}"
        print("reloaded config.json + model.safetensors with transformers: identical weights", flush=True)
        del model
    except Exception as e:  # keep the run: evaluate the in-memory copy, which holds the saved values
        print(f"warning: from_pretrained check failed ({type(e).__name__}: {e}); evaluating the in-memory "
              f"bf16-rounded model instead", flush=True)
        eval_weights = f"the in-memory model rounded to bf16 (from_pretrained failed: {type(e).__name__})"
        m2 = model
        m2.config._attn_implementation = "eager"
        m2.config._experts_implementation = "eager"
        m2.eval()
    if a.eval_experts == "dense":
        use_dense_experts(m2, True)
    per_sentence, held_loss = measure(m2, held_ids, device)
    counts, real, sh_mean, sh_max = analyse(per_sentence, labels, L, E, a.shuffles, a.seed)
    totals = {l: [sum(counts[l][layer]) for layer in range(L)] for l in LANGS}
    for l in LANGS:
        n_tok = sum(len(x) for r, x in zip(held, held_ids) if r[1] == l)
        assert all(t == n_tok * K for t in totals[l]), (l, totals[l][0], n_tok)
    all_counts = [[sum(counts[l][layer][e] for l in LANGS) for e in range(E)] for layer in range(L)]
    eff = [effective_experts(c) for c in all_counts]
    total_seconds = time.time() - t_start

    ev = {
        "model": "moe-lens demo (OLMoE architecture, not OLMoE)",
        "card": card,
        "versions": versions,
        "config": {k: ARCH[k] for k in ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                        "num_attention_heads", "num_key_value_heads", "num_experts",
                                        "num_experts_per_tok", "norm_topk_prob", "tie_word_embeddings"]},
        "parameters": n_params,
        "weights_bytes": wbytes,
        "corpus": "crates/moe-lens/data/corpus/trilingual.tsv",
        "extra_sentences": len(extra),
        "extra_note": f" plus {len(extra)} sentences of training/extra.tsv" if extra else "",
        "held_out_rule": f"triples whose number is a multiple of {HELD_OUT_EVERY}",
        "held_out_triples": sorted({r[0].split('-')[0] for r in held}),
        "held_out_ids": [r[0] for r in held],
        "held_out_tokens": summary(held, held_ids),
        "train_sentences": len(train),
        "train_tokens": sum(len(x) for x in train_ids),
        "training": {"seed": a.seed, "steps": steps_done, "steps_planned": planned, "stopped_early": stopped_early,
                     "batch_size": a.batch_size, "lr": a.lr, "lr_min": a.lr_min, "warmup": a.warmup,
                     "weight_decay": a.weight_decay, "clip": a.clip, "optimizer": "AdamW(0.9, 0.95)",
                     "aux_loss_coef": ARCH["router_aux_loss_coef"], "z_loss_coef": a.z_loss,
                     "dtype": "float32", "seconds": round(train_seconds, 2),
                     "final_lm_loss": final[0], "final_aux_loss": final[1], "final_z_loss": final[2]},
        "heldout_lm_loss": held_loss,
        "heldout_lm_loss_untrained": un_loss,
        "eval": {"dtype": "float32", "attention": "eager",
                 "experts": "transformers eager (sparse loop)" if a.eval_experts == "eager" else "dense equivalent",
                 "weights": eval_weights,
                 "tokens": "every token of tokenizer.encode(text) (no BOS, no EOS), one sentence per forward",
                 "distribution": "counts[lang][layer][expert] of top-8 selections; share = count / total"},
        "counts": counts,
        "totals": totals,
        "jsd": real,
        "jsd_shuffled": sh_mean,
        "jsd_shuffled_max": sh_max,
        "shuffles": a.shuffles,
        "shuffle": "the held-out sentences' language labels permuted with random.Random(seed).shuffle, seed as training",
        "jsd_untrained": un_jsd,
        "effective_experts": eff,
        "total_seconds": round(total_seconds, 1),
    }
    with open(os.path.join(a.out, "eval.json"), "w") as f:
        json.dump(ev, f, indent=1)
        f.write("\n")
    write_card(a.out, ev)
    print("layer  en-ko  en-ja  ko-ja | shuffled(max pair) | untrained(max pair) | effective experts")
    for l in range(L):
        print(f"{l:5d}  {real['en-ko'][l]:.3f}  {real['en-ja'][l]:.3f}  {real['ko-ja'][l]:.3f} | "
              f"{max(sh_mean[p][l] for p in sh_mean):.3f} | {max(un_jsd[p][l] for p in un_jsd):.3f} | {eff[l]:.1f}")
    print(f"held-out CE {held_loss:.3f} (untrained {un_loss:.3f}); training {train_seconds:.1f} s; "
          f"all {total_seconds:.1f} s", flush=True)


if __name__ == "__main__":
    main()
