"""Makes the full-size random OLMoE on the GPU with transformers (no download), saves it as bf16
safetensors, writes the 1,000 benchmark sentences (token ids, drawn as seed_baseline.py draws them)
and transformers' bf16 routing of the first 100 as the reference.

usage: python3 bench/gpu_prep.py MODEL_DIR WORK_DIR     (env INIT=decisive|default, default decisive)

DEVICE=cpu makes the model on the CPU instead (no GPU needed; other random draws, so other weights
than the GPU's) and stops after the sentences: no transformers references.

INIT=decisive re-draws every weight as tests/fixtures/make_fixtures.py's `init_weights` does
(N(0, 1.5²/fan_in) for matrices, N(1, 0.2²) for norm weights, N(0, 1) embeddings), so router logits
are O(1) and top-8 choices are not near-ties; transformers' own init gives tiny router logits."""
import json, os, sys, time
import torch, transformers
from transformers import OlmoeConfig, OlmoeForCausalLM

model_dir, work = sys.argv[1], sys.argv[2]
INIT = os.environ.get("INIT", "decisive")
DEV = os.environ.get("DEVICE", "cuda")
os.makedirs(work, exist_ok=True)
res = {"transformers": transformers.__version__, "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if DEV == "cuda" else "cpu", "init": INIT}
cfg = OlmoeConfig(vocab_size=50304, hidden_size=2048, intermediate_size=1024, num_hidden_layers=16,
                  num_attention_heads=16, num_key_value_heads=16, num_experts=64, num_experts_per_tok=8,
                  max_position_embeddings=4096, rope_theta=10000.0, norm_topk_prob=False, clip_qkv=None,
                  rms_norm_eps=1e-5, tie_word_embeddings=False, pad_token_id=1, bos_token_id=None, eos_token_id=50279)
torch.manual_seed(0)
t = time.perf_counter()
torch.set_default_dtype(torch.bfloat16)
with torch.device(DEV):
    model = OlmoeForCausalLM(cfg)
torch.set_default_dtype(torch.float32)
if INIT == "decisive":
    g = torch.Generator(device=DEV).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                v = 1.0 + 0.2 * torch.randn(p.shape, generator=g, device=DEV)
            elif "embed_tokens" in name:
                v = torch.randn(p.shape, generator=g, device=DEV)
            else:
                v = torch.randn(p.shape, generator=g, device=DEV) * (1.5 / p.shape[-1] ** 0.5)
            p.copy_(v.to(torch.bfloat16)); del v
if DEV == "cuda": torch.cuda.synchronize()
res["init_s"] = time.perf_counter() - t
model.eval()
t = time.perf_counter(); model.save_pretrained(model_dir); res["save_s"] = time.perf_counter() - t
res["files"] = sorted(os.listdir(model_dir))

# the benchmark sentences, drawn exactly as seed_baseline.py draws them
g = torch.Generator().manual_seed(1)
lens = torch.randint(15, 41, (1000,), generator=g).tolist()
sents = [torch.randint(2, 50000, (n,), generator=g) for n in lens]
json.dump([s.tolist() for s in sents], open(os.path.join(work, "sents.json"), "w"))
if DEV != "cuda":
    print("PREP", json.dumps(res), flush=True)
    json.dump(res, open(os.path.join(work, "prep.json"), "w"))
    sys.exit(0)

# transformers' own routing of the first 100 sentences: bf16 with its default attention (SDPA), bf16
# with eager attention, and float32 with eager attention (logits kept) -- the last is the reference
# for implementation errors, the first two show how much bf16 rounding alone moves the top-8.
store = []
def hook(mod, inp, out):
    logits = out[0] if isinstance(out, tuple) else out
    p = torch.softmax(logits.float(), -1)
    idx = torch.topk(p, 8, -1).indices
    store.append((idx.cpu(), logits.float().cpu()))
for n, m in model.named_modules():
    if n.endswith("mlp.gate"):
        m.register_forward_hook(hook)
def refs(tag, keep_logits=False):
    ref, lg = [], []
    t = time.perf_counter()
    with torch.no_grad():
        for s in sents[:100]:
            store.clear(); model(s[None].cuda())
            ref.append([x[0].tolist() for x in store])
            if keep_logits: lg.append([x[1].flatten().tolist() for x in store])
    res[f"ref_{tag}_s"] = time.perf_counter() - t
    json.dump(ref, open(os.path.join(work, f"ref_{tag}.json"), "w"))
    if keep_logits: json.dump(lg, open(os.path.join(work, f"ref_{tag}_logits.json"), "w"))
def set_attn(impl):
    try:
        model.set_attn_implementation(impl)
    except Exception as e:
        res[f"set_attn_{impl}_error"] = repr(e)[:200]; model.config._attn_implementation = impl
    res.setdefault("attn_impls", []).append(model.config._attn_implementation)
res["attn_default"] = str(model.config._attn_implementation)
res["experts_impl"] = str(getattr(model.config, "_experts_implementation", None))
refs("bf16")
set_attn("eager"); refs("bf16_eager")
model.float(); torch.cuda.empty_cache()
refs("f32", keep_logits=True)
# near-ties in the float32 reference: gap between the 8th and 9th expert, in probability and in
# logit (against one bf16 step at the 8th logit's size)
gp, gl, ulp = [], [], []
for sent in json.load(open(os.path.join(work, "ref_f32_logits.json"))):
    for layer in sent:
        x = torch.tensor(layer).view(-1, 64)
        srt = x.sort(-1, descending=True).values
        p = torch.softmax(x, -1).sort(-1, descending=True).values
        gp.append(p[:, 7] - p[:, 8]); gl.append(srt[:, 7] - srt[:, 8])
        ulp.append(torch.pow(2.0, torch.floor(torch.log2(srt[:, 7].abs().clamp_min(1e-30))) - 7))
gp, gl, ulp = torch.cat(gp), torch.cat(gl), torch.cat(ulp)
res["ref_rows"] = int(gp.numel())
res["gap8_9_median"] = float(gp.median()); res["gap8_9_lt_1e-3_share"] = float((gp < 1e-3).float().mean())
res["gap8_9_lt_1e-4_share"] = float((gp < 1e-4).float().mean())
res["logit_gap8_9_median"] = float(gl.median())
for m in (1, 2, 4):
    res[f"logit_gap8_9_lt_{m}_bf16_ulp_share"] = float((gl < m * ulp).float().mean())
print("PREP", json.dumps(res), flush=True)
json.dump(res, open(os.path.join(work, "prep.json"), "w"))
