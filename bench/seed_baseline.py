"""(Copy of ../shared/bench/seed_baseline.py; one change: with SEED_MODEL_DIR set it times the model
already saved there instead of making and saving its own, so both pipelines run the same weights.)
Seed pipeline baseline: HF transformers OLMoE-1B-7B (random weights, real dims) with the
seed's router hooks, timed on one GPU. Writes $OUT/seed_baseline.json and prints a table."""
import json, os, statistics, sys, time
import torch
import transformers
from transformers import OlmoeConfig, OlmoeForCausalLM

OUT = os.environ.get("OUT", "/tmp")
TINY = os.environ.get("TINY") == "1"
DEV = "cpu" if TINY else "cuda"
res = {"torch": torch.__version__, "transformers": transformers.__version__,
       "gpu": torch.cuda.get_device_name(0) if not TINY else "cpu"}
print(res, flush=True)

def sync():
    if not TINY: torch.cuda.synchronize()

# device-to-device copy bandwidth (bytes read + written)
x = torch.empty(2 * 1024**3 if not TINY else 1024**2, dtype=torch.uint8, device=DEV); y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
sync(); t = time.perf_counter()
for _ in range(10): y.copy_(x)
sync(); res["copy_GBps"] = (2 if not TINY else 1/1024) * 2 * 10 / (time.perf_counter() - t)
del x, y
if not TINY: torch.cuda.empty_cache()

cfg = OlmoeConfig(vocab_size=50304, hidden_size=2048, intermediate_size=1024, num_hidden_layers=16,
                  num_attention_heads=16, num_key_value_heads=16, num_experts=64, num_experts_per_tok=8,
                  max_position_embeddings=4096, rope_theta=10000.0, norm_topk_prob=False, clip_qkv=None,
                  rms_norm_eps=1e-5, tie_word_embeddings=False, pad_token_id=1, bos_token_id=None, eos_token_id=50279)
if TINY:
    cfg.hidden_size=64; cfg.intermediate_size=32; cfg.num_hidden_layers=2; cfg.num_attention_heads=4; cfg.num_key_value_heads=4
if os.environ.get("SEED_MODEL_DIR"):
    path = os.environ["SEED_MODEL_DIR"]; res["model_dir"] = path
else:
    torch.manual_seed(0)
    t = time.perf_counter()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(DEV):
        model = OlmoeForCausalLM(cfg)
    torch.set_default_dtype(torch.float32)
    sync(); res["random_init_s"] = time.perf_counter() - t
    nparams = sum(p.numel() for p in model.parameters())
    res["params"] = nparams
    import tempfile
    path = os.path.join(os.environ.get("TMPDIR", tempfile.gettempdir()), "olmoe-rand" + ("-tiny" if TINY else ""))
    t = time.perf_counter(); model.save_pretrained(path); res["save_s"] = time.perf_counter() - t
    keys = sorted(os.listdir(path)); res["saved_files"] = keys
    from safetensors import safe_open
    names = []
    for f in keys:
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(path, f), "pt") as h:
                names += [(k, list(h.get_slice(k).get_shape())) for k in h.keys()]
    res["saved_tensor_names_layer0"] = [n for n in names if ".layers.0." in n[0]][:20]
    res["saved_tensor_count"] = len(names)

    del model
    if not TINY: torch.cuda.empty_cache()

SEED_TEXT_LEN = 25
g = torch.Generator().manual_seed(1)
lens = torch.randint(15, 41, (1000 if not TINY else 40,), generator=g).tolist()
NS = 1000 if not TINY else 40
sents = [torch.randint(2, 50000, (n,), generator=g) for n in lens]

def bench(model, label):
    r = {}
    router_logs = {}
    shapes = {}
    def get_hook(name):
        def hook(module, inputs, outputs):
            shapes.setdefault("type", type(outputs).__name__)
            if isinstance(outputs, tuple):
                shapes.setdefault("tuple_shapes", [list(o.shape) if hasattr(o, "shape") else str(type(o)) for o in outputs])
                # transformers 5.x: (logits, top-k weights, top-k indices); the seed's outputs[1] misses it
                val = next((o for o in outputs if isinstance(o, torch.Tensor) and o.shape[-1] == 64), None)
            else:
                val = outputs
            if isinstance(val, torch.Tensor) and val.shape[-1] == 64:
                router_logs[name] = val.detach().float().cpu()
        return hook
    n = 0
    for name, m in model.named_modules():
        if name.endswith("mlp.gate"):
            m.register_forward_hook(get_hook(name)); n += 1
    r["hooks"] = n
    r["gate_type"] = type(model.get_submodule("model.layers.0.mlp.gate")).__name__
    ids = torch.randint(2, 50000, (1, SEED_TEXT_LEN), generator=g).to(DEV)
    with torch.no_grad():
        for _ in range(3): model(ids)
        sync()
        ts = []
        for _ in range(20):
            t = time.perf_counter(); model(ids); sync(); ts.append(time.perf_counter() - t)
    r["single_ms_median"] = 1000 * statistics.median(ts)
    r["captured_layers"] = len(router_logs); r["hook_output"] = dict(shapes)
    # seed's "scale up": loop 1000 sentences one by one
    with torch.no_grad():
        sync(); t = time.perf_counter()
        for s in sents:
            router_logs.clear(); model(s[None].to(DEV))
        sync(); dt = time.perf_counter() - t
    r["loop1000_s"] = dt; r["loop1000_tok_per_s"] = sum(lens) / dt
    # batched, 32 a batch, right padding with mask
    with torch.no_grad():
        sync(); t = time.perf_counter()
        for i in range(0, len(sents), 32):
            chunk = sents[i:i + 32]; L = max(len(c) for c in chunk)
            batch = torch.full((len(chunk), L), 1, dtype=torch.long); mask = torch.zeros_like(batch)
            for j, c in enumerate(chunk): batch[j, :len(c)] = c; mask[j, :len(c)] = 1
            router_logs.clear(); model(batch.to(DEV), attention_mask=mask.to(DEV))
        sync(); dt = time.perf_counter() - t
    r["batch32_1000_s"] = dt; r["batch32_tok_per_s"] = sum(lens) / dt
    with torch.no_grad():
        t = time.perf_counter(); model.generate(ids, max_new_tokens=10, do_sample=False); sync()
    r["generate10_s"] = time.perf_counter() - t
    r["peak_mem_GiB"] = (torch.cuda.max_memory_allocated() / 2**30 if not TINY else 0)
    print(label, json.dumps(r), flush=True)
    return r

if not TINY: torch.cuda.reset_peak_memory_stats()
t = time.perf_counter()
model = OlmoeForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map=DEV)
sync(); res["bf16_load_s"] = time.perf_counter() - t
res["experts_impl"] = str(getattr(model.config, "_experts_implementation", None))
res["bf16"] = bench(model, "bf16")
del model
if not TINY: torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
try:
    from transformers import BitsAndBytesConfig
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float16, bnb_4bit_quant_type="nf4")
    t = time.perf_counter()
    model = OlmoeForCausalLM.from_pretrained(path, quantization_config=q, device_map="auto")
    sync(); res["nf4_load_s"] = time.perf_counter() - t
    res["nf4"] = bench(model, "nf4")
except Exception as e:
    res["nf4_error"] = repr(e)[:500]
json.dump(res, open(os.path.join(OUT, "seed_baseline.json"), "w"), indent=1)
print(json.dumps({k: v for k, v in res.items() if k != "saved_tensor_names_layer0"}, indent=1))
