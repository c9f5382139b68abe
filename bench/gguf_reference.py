"""transformers' routing on the weights of a llama.cpp GGUF file, dequantized by llama.cpp's own
gguf-py: the independent reference for loading a quantized GGUF. A 4-bit file routes differently
from the bf16 checkpoint it was made from; this says how much of that is the file (transformers
on the file's weights against transformers on the checkpoint) and whether our loader computes the
file's function (ours on the file against transformers on the file's weights).

usage: PYTHONPATH=<llama.cpp>/gguf-py python3 bench/gguf_reference.py GGUF CONFIG_DIR SENTS_JSON OUT_DIR TAG [N] [DEVICE]

  CONFIG_DIR  holds the model's config.json (the checkpoint the file was made from)
  SENTS_JSON  a list of sentences, each a list of token ids; the first N (default 100) are run
  Writes OUT_DIR/ref_<TAG>_f32.json (float32, eager attention) and OUT_DIR/ref_<TAG>_bf16.json
  (bf16, transformers' default attention): per sentence, per layer, per token the top-8 expert ids,
  as bench/compare.py reads them; and OUT_DIR/ref_<TAG>_f32_top.json: the same rows with the
  float32 router logits of those top-8 experts, for tests.
"""
import json, os, sys, time

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize
from transformers import OlmoeConfig, OlmoeForCausalLM

gguf_path, cfg_dir, sents_path, out_dir, tag = sys.argv[1:6]
n = int(sys.argv[6]) if len(sys.argv) > 6 else 100
dev = sys.argv[7] if len(sys.argv) > 7 else ("cuda" if torch.cuda.is_available() else "cpu")
os.makedirs(out_dir, exist_ok=True)
t0 = time.perf_counter()

# the file's tensors, dequantized by llama.cpp's gguf-py (numpy shapes are the logical ones, e.g.
# ffn_gate_exps: [experts, intermediate, hidden])
reader = GGUFReader(gguf_path)
ggml = {}
types = {}
for t in reader.tensors:
    ggml[t.name] = dequantize(t.data, t.tensor_type).astype(np.float32)
    types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
print("gguf types", types, f"dequantized in {time.perf_counter() - t0:.1f} s", flush=True)

cfg = OlmoeConfig.from_pretrained(cfg_dir)
cfg._attn_implementation = "eager"
with torch.device(dev):
    model = OlmoeForCausalLM(cfg).float().eval()


def put(param_name, array):
    p = dict(model.named_parameters())[param_name]
    t = torch.from_numpy(np.ascontiguousarray(array))
    if tuple(t.shape) != tuple(p.shape):
        raise SystemExit(f"{param_name}: the file gives {tuple(t.shape)}, the model wants {tuple(p.shape)}")
    with torch.no_grad():
        p.copy_(t.to(p.device))


# llama.cpp's names (convert_hf_to_gguf.py, arch olmoe) back to transformers 5.x parameters
put("model.embed_tokens.weight", ggml.pop("token_embd.weight"))
put("model.norm.weight", ggml.pop("output_norm.weight"))
put("lm_head.weight", ggml.pop("output.weight") if "output.weight" in ggml else model.model.embed_tokens.weight.detach().cpu().numpy())
short = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
         "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
         "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "ffn_gate_inp": "mlp.gate"}
for l in range(cfg.num_hidden_layers):
    for s, hf in short.items():
        put(f"model.layers.{l}.{hf}.weight", ggml.pop(f"blk.{l}.{s}.weight"))
    gate, up = ggml.pop(f"blk.{l}.ffn_gate_exps.weight"), ggml.pop(f"blk.{l}.ffn_up_exps.weight")
    put(f"model.layers.{l}.mlp.experts.gate_up_proj", np.concatenate([gate, up], axis=1))  # [E, 2I, H]
    put(f"model.layers.{l}.mlp.experts.down_proj", ggml.pop(f"blk.{l}.ffn_down_exps.weight"))  # [E, H, I]
if ggml:
    raise SystemExit(f"tensors of the file not used: {sorted(ggml)[:5]}")
del ggml

sents = [torch.tensor(s) for s in json.load(open(sents_path))[:n]]
store = []
def hook(mod, inp, out):
    logits = out[0] if isinstance(out, tuple) else out  # transformers 5.x: (router logits, …)
    logits = logits.float()
    idx = torch.topk(torch.softmax(logits, -1), cfg.num_experts_per_tok, -1).indices
    store.append((idx.cpu(), torch.gather(logits, -1, idx).cpu()))
for name, m in model.named_modules():
    if name.endswith("mlp.gate"):
        m.register_forward_hook(hook)

def run(name, keep_top=False):
    ref, top = [], []
    t = time.perf_counter()
    with torch.no_grad():
        for s in sents:
            store.clear()
            model(s[None].to(dev))
            ref.append([x[0].tolist() for x in store])
            if keep_top:
                top.append([x[1].tolist() for x in store])
    json.dump(ref, open(os.path.join(out_dir, f"ref_{tag}_{name}.json"), "w"))
    if keep_top:
        json.dump({"gguf": os.path.basename(gguf_path), "types": types, "top_k": ref, "top_logits": top},
                  open(os.path.join(out_dir, f"ref_{tag}_{name}_top.json"), "w"))
    print(f"{name}: {len(sents)} sentences in {time.perf_counter() - t:.1f} s", flush=True)

run("f32", keep_top=True)
model.to(torch.bfloat16)
model.set_attn_implementation("sdpa")
run("bf16")
